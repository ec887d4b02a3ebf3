"""Video in and out through PyAV (FFmpeg inside the wheel): files (mp4, avi, …), camera devices (v4l2) and RTSP
URLs in; an H.264 (or MPEG-4 Part 2) file out. Frames are RGB uint8 arrays."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

_DEVICE = re.compile(r"^(?:/dev/video)?(\d+)$")


@dataclass(frozen=True)
class VideoFrame:
    index: int  # 0-based position in the source (frames skipped by a live reader leave gaps)
    time_s: float  # presentation time from the container, or index / fps when it has none
    image: np.ndarray  # RGB uint8 [H, W, 3]


@dataclass(frozen=True)
class SourceSpec:
    """What ``open_video`` opens: a URL, a device or a file, and whether it is live (frames come at their pace)."""

    url: str
    format: str | None
    options: dict[str, str]
    live: bool

    @classmethod
    def parse(cls, source: str) -> SourceSpec:
        """``0`` or ``/dev/video0`` → camera (v4l2); ``rtsp://…``/``rtmp://…``/``http(s)://…`` → network stream;
        anything else → a file, which must exist."""
        device = _DEVICE.match(source)
        if device:
            return cls(f"/dev/video{device.group(1)}", "v4l2", {}, live=True)
        if source.startswith(("rtsp://", "rtsps://")):
            # TCP: no lost packets (smeared frames) on a lossy link; a 10 s socket timeout (µs) so a dead camera ends
            return cls(source, None, {"rtsp_transport": "tcp", "timeout": "10000000"}, live=True)
        if source.startswith(("rtmp://", "http://", "https://", "udp://", "srt://")):
            return cls(source, None, {}, live=True)
        if not Path(source).is_file():
            raise FileNotFoundError(f"video not found: {source}")
        return cls(source, None, {}, live=False)


class VideoReader:
    """Decodes the first video stream of a source; iterate for :class:`VideoFrame` s, ``close()`` when done."""

    def __init__(self, spec: SourceSpec) -> None:
        import av

        self.spec = spec
        try:
            self._container = av.open(spec.url, format=spec.format, options=spec.options, timeout=30.0)
        except (av.FFmpegError, OSError) as exc:
            raise RuntimeError(f"cannot open video {spec.url}: {exc}") from None
        if not self._container.streams.video:
            self._container.close()
            raise RuntimeError(f"{spec.url} has no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        rate = self._stream.average_rate or self._stream.base_rate
        self.fps = float(rate) if rate else 25.0
        self.frame_count = int(self._stream.frames or 0)  # 0 when the container does not say (live sources)
        self.size = (self._stream.codec_context.height, self._stream.codec_context.width)

    def __iter__(self) -> Iterator[VideoFrame]:
        for index, frame in enumerate(self._container.decode(self._stream)):
            time_s = float(frame.time) if frame.time is not None else index / self.fps
            yield VideoFrame(index, time_s, frame.to_ndarray(format="rgb24"))

    def close(self) -> None:
        self._container.close()


class LatestFrame:
    """Reads frames on a thread and keeps only the newest: a consumer slower than the camera gets the freshest
    picture, and the frames it could not take are counted in ``skipped``."""

    def __init__(self, frames: Iterable[VideoFrame], name: str) -> None:
        self._frames, self._name = frames, name
        self._cond = threading.Condition()
        self._frame: VideoFrame | None = None
        self._done = False
        self._error: BaseException | None = None
        self.skipped = 0
        self._thread = threading.Thread(target=self._run, name="video-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for frame in self._frames:
                with self._cond:
                    if self._done:
                        return
                    self.skipped += self._frame is not None
                    self._frame = frame
                    self._cond.notify()
        except Exception as exc:  # noqa: BLE001 - whatever the decoder raised is re-raised in the consumer's thread
            self._error = exc
        finally:
            with self._cond:
                self._done = True
                self._cond.notify()

    def __iter__(self) -> Iterator[VideoFrame]:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._frame is not None or self._done)
                frame, self._frame = self._frame, None
            if frame is None:
                if self._error is not None:
                    raise RuntimeError(f"reading {self._name} failed: {self._error}")
                return
            yield frame

    def stop(self) -> None:
        with self._cond:
            self._done = True
            self._cond.notify()


def open_video(source: str, live: bool | None = None) -> tuple[VideoReader, Iterable[VideoFrame], bool]:
    """Opens ``source``; returns the reader (close it when done), the frames to process and whether they are live.

    A live source (camera, network, or ``live=True`` for a file, which then plays at its own frame rate) is read on a
    thread that keeps only the newest frame; a file is otherwise processed frame by frame, however long that takes.
    """
    spec = SourceSpec.parse(source)
    live = spec.live if live is None else live
    reader = VideoReader(spec)
    if not live:
        return reader, reader, False
    return reader, LatestFrame(reader if spec.live else _paced(reader), spec.url), True


def _paced(frames: Iterable[VideoFrame]) -> Iterator[VideoFrame]:
    """A file's frames at the pace a camera would deliver them (their timestamps)."""
    start, first = time.monotonic(), None
    for frame in frames:
        first = frame.time_s if first is None else first
        delay = (frame.time_s - first) - (time.monotonic() - start)
        if delay > 0:
            time.sleep(delay)
        yield frame


class VideoWriter:
    """Writes RGB frames to a video file: H.264 (yuv420p, playable everywhere) when the wheel's FFmpeg has libx264,
    else MPEG-4 Part 2. Frame sizes are rounded down to even numbers (4:2:0 needs them)."""

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int]) -> None:
        import av

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.path), mode="w")
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        self._stream = self._container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        self.height, self.width = size[0] // 2 * 2, size[1] // 2 * 2
        self._stream.height, self._stream.width = self.height, self.width
        self._stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            self._stream.options = {"crf": "23", "preset": "veryfast"}
        else:
            self._stream.bit_rate = 2_000_000

    def write(self, image: np.ndarray) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[: self.height, : self.width]), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def close(self) -> None:
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
