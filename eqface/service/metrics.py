"""Prometheus metrics of the aggregation service (own registry, served on a separate HTTP port).

Names follow Prometheus conventions (checked with ``promtool check metrics`` in the tests): counters end in
``_total``, durations are ``_seconds`` histograms, everything is prefixed ``eqface_aggregator_``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter as Tally
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from eqface.service.aggregator import FrameOutcome, FrameStatus

# The frames_total label values (FrameStatus folded into the five results the dashboards use).
RESULTS = ("accepted", "rejected_quality", "rejected_similarity", "duplicate", "error")
STAGES = ("decode", "triton", "update", "store")
_RESULT_OF = {
    FrameStatus.SEEDED: "accepted",
    FrameStatus.ACCEPTED: "accepted",
    FrameStatus.RESEEDED: "accepted",
    FrameStatus.REJECTED_QUALITY: "rejected_quality",
    FrameStatus.REJECTED_SIMILARITY: "rejected_similarity",
    FrameStatus.DUPLICATE: "duplicate",
    FrameStatus.INVALID: "error",
}
QUALITY_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))  # every 0.05 across [0, 1]
SIMILARITY_BUCKETS = tuple(round(-1.0 + 0.1 * i, 1) for i in range(1, 21))  # cosine in [-1, 1]
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
GROUP_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


class BatchHistogram:
    """A Prometheus histogram fed a whole message of observations per call (``Histogram.observe`` costs ~1 µs per
    value, which at 20k frames/s and two histograms per frame is several percent of a core)."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self._bounds = np.array([*buckets, float("inf")])
        self._labels = [floatToGoString(b) for b in self._bounds]
        self._counts = np.zeros(len(self._bounds), dtype=np.int64)
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: Sequence[float]) -> None:
        if not len(values):
            return
        v = np.asarray(values, dtype=np.float64)
        counts = np.bincount(np.searchsorted(self._bounds, v, side="left"), minlength=len(self._bounds))
        with self._lock:  # scrapes run on the HTTP server's thread
            self._counts += counts
            self._sum += float(v.sum())

    def describe(self) -> list[HistogramMetricFamily]:
        return [HistogramMetricFamily(self.name, self.documentation)]

    def collect(self) -> list[HistogramMetricFamily]:
        with self._lock:
            cumulative, total = np.cumsum(self._counts), self._sum
        family = HistogramMetricFamily(self.name, self.documentation)
        for label, count in zip(self._labels, cumulative):
            family.add_sample(f"{self.name}_bucket", {"le": label}, float(count))
        # Added by hand: HistogramMetricFamily drops _count and _sum when a bucket bound is negative (similarity).
        family.add_sample(f"{self.name}_count", {}, float(cumulative[-1]))
        family.add_sample(f"{self.name}_sum", {}, total)
        return [family]


class ActiveSubjects:
    """Subjects that received a frame within the last ``window_s`` seconds, tracking at most ``max_tracked``."""

    def __init__(self, window_s: float, max_tracked: int) -> None:
        self.window_s = window_s
        self.max_tracked = max_tracked
        self._last_seen: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()  # count() runs on the metrics HTTP thread

    def touch(self, subject_ids: Iterable[str], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            seen = self._last_seen
            for sid in subject_ids:
                seen[sid] = now
                seen.move_to_end(sid)
            while len(seen) > self.max_tracked:
                seen.popitem(last=False)

    def forget(self, subject_id: str) -> None:
        with self._lock:
            self._last_seen.pop(subject_id, None)

    def count(self, now: float | None = None) -> int:
        cutoff = (time.monotonic() if now is None else now) - self.window_s
        with self._lock:
            seen = self._last_seen
            while seen and next(iter(seen.values())) < cutoff:
                seen.popitem(last=False)
            return len(seen)


class ServiceMetrics:
    """Every metric the service exports; pass one instance to the components that record."""

    def __init__(self, active_window_s: float = 60.0, max_tracked_subjects: int = 100_000) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ns = dict(namespace="eqface", subsystem="aggregator", registry=self.registry)
        self.frames = Counter("frames", "Frames processed, by result.", ["result"], **ns)
        self._frames_by_result = {r: self.frames.labels(r) for r in RESULTS}
        self.quality = BatchHistogram(
            "eqface_aggregator_frame_quality",
            "Quality s of processed frames (0 to 1).",
            QUALITY_BUCKETS,
            self.registry,
        )
        self.similarity = BatchHistogram(
            "eqface_aggregator_frame_similarity",
            "Cosine similarity of a frame to its subject's template before the frame.",
            SIMILARITY_BUCKETS,
            self.registry,
        )
        self.stage = Histogram(
            "stage_duration_seconds",
            "Time spent per stage: decode (images), triton (inference), update (QWFA), store (reads and commits).",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            **ns,
        )
        self._stages = {s: self.stage.labels(s) for s in STAGES}
        self.group = Histogram(
            "commit_group_frames", "Frames per group-commit transaction.", buckets=GROUP_BUCKETS, **ns
        )
        self.triton_errors = Counter("triton_errors", "Failed Triton requests, by reason.", ["reason"], **ns)
        self.triton_batch = Histogram(
            "triton_batch_images", "Images per Triton request (micro-batch size).", buckets=GROUP_BUCKETS[:9], **ns
        )
        self.active_subjects = Gauge(
            "active_subjects", f"Subjects that received a frame in the last {active_window_s:g} s.", **ns
        )
        self.stored_subjects = Gauge("stored_subjects", "Subjects in the store (refreshed periodically).", **ns)
        self.cached_subjects = Gauge("cached_subjects", "Subjects held decoded in the in-memory LRU cache.", **ns)
        self.gallery_size = Gauge("gallery_identities", "Identities enrolled in the gallery.", **ns)
        self.open_streams = Gauge("open_streams", "StreamFrames calls in progress.", **ns)
        self.inflight_bytes = Gauge(
            "inflight_bytes",
            "Accounted bytes of frames read and not yet answered, all streams (bounded by the memory budget).",
            **ns,
        )
        self.dependency_up = Gauge(
            "dependency_up", "1 when a dependency (triton, store) answered its last check.", ["dependency"], **ns
        )
        self.threshold = Gauge(
            "aggregation_threshold",
            "Aggregation threshold in use (f_th, s_th, qwfaf_s_th) and where it came from: flag, model (the served "
            "model's calibration) or paper_default.",
            ["threshold", "source"],
            **ns,
        )
        self.active = ActiveSubjects(active_window_s, max_tracked_subjects)
        self.active_subjects.set_function(self.active.count)
        self._http = None

    def observe_stage(self, stage: str, seconds: float) -> None:
        self._stages[stage].observe(seconds)

    def observe_group(self, frames: int) -> None:
        self.group.observe(frames)

    def observe_outcomes(self, outcomes: Sequence[FrameOutcome]) -> None:
        tally: Tally[str] = Tally()
        qualities, similarities = [], []
        for o in outcomes:
            tally[_RESULT_OF[o.status]] += 1
            if o.status is FrameStatus.DUPLICATE or o.status is FrameStatus.INVALID:
                continue
            qualities.append(o.quality)
            if o.similarity is not None:
                similarities.append(o.similarity)
        for result, n in tally.items():
            self._frames_by_result[result].inc(n)
        self.quality.observe_many(qualities)
        self.similarity.observe_many(similarities)
        self.active.touch(dict.fromkeys(o.subject_id for o in outcomes))

    def serve(self, port: int, host: str) -> int:
        """Starts the /metrics HTTP endpoint on ``host`` (the gRPC port's host: every port honours ``--host``) in a
        daemon thread; returns the bound port (port 0 picks a free one)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        return int(server.server_address[1])

    @property
    def address(self) -> tuple[str, int] | None:
        """The (host, port) the /metrics endpoint listens on; None when it is not serving."""
        return None if self._http is None else tuple(self._http.server_address[:2])  # type: ignore[return-value]

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
