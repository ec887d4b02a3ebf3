"""insightface verification packs: every layout real files use loads; any other global is refused before it runs."""

from __future__ import annotations

import builtins
import codecs
import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eqface.data.decode import ImageDecodeError
from eqface.eval.binfile import load_bin


def png_bytes(color: tuple[int, int, int], size: tuple[int, int] = (4, 3)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")  # size is (width, height)
    return buffer.getvalue()


IMAGES = [png_bytes((255, 0, 0)), png_bytes((0, 255, 0)), png_bytes((0, 0, 255)), png_bytes((9, 9, 9))]
ISSAME = [True, False]


def write(path: Path, obj: object, protocol: int = pickle.HIGHEST_PROTOCOL) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


@pytest.mark.parametrize("protocol", [2, 4, pickle.HIGHEST_PROTOCOL])
def test_bytes_pack_loads(tmp_path: Path, protocol: int) -> None:
    # protocol 2 written by Python 3 stores bytes through _codecs.encode, which must be allowed (and restricted)
    pack = load_bin(write(tmp_path / "lfw.bin", (IMAGES, ISSAME), protocol))
    assert pack.name == "lfw" and len(pack) == 2
    assert pack.images == tuple(IMAGES)
    np.testing.assert_array_equal(pack.issame, [True, False])
    assert pack.pair_bytes(1) == (IMAGES[2], IMAGES[3], False)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_numpy_uint8_pack_loads(tmp_path: Path, protocol: int) -> None:
    bins = [np.frombuffer(image, dtype=np.uint8) for image in IMAGES]
    issame = [np.bool_(True), np.bool_(False)]
    pack = load_bin(write(tmp_path / "cfp_fp.bin", (bins, issame), protocol))
    assert pack.images == tuple(IMAGES)
    np.testing.assert_array_equal(pack.issame, [True, False])


def test_numpy_bool_array_issame_loads(tmp_path: Path) -> None:
    pack = load_bin(write(tmp_path / "agedb_30.bin", (IMAGES, np.array(ISSAME)), protocol=2))
    np.testing.assert_array_equal(pack.issame, [True, False])


def test_python2_pack_loads(tmp_path: Path) -> None:
    # Hand-written protocol-2 stream as Python 2 writes it: image bytes as py2 str (SHORT_BINSTRING), so no global.
    stream = (
        b"\x80\x02"  # PROTO 2
        b"](U\x02\xff\x00U\x01Ae"  # [ '\xff\x00', 'A' ]
        b"](\x88e"  # [ True ]
        b"\x86."  # TUPLE2, STOP
    )
    path = tmp_path / "py2.bin"
    path.write_bytes(stream)
    pack = load_bin(path)
    assert pack.images == (b"\xff\x00", b"A")  # byte values survive the latin-1 round trip
    np.testing.assert_array_equal(pack.issame, [True])


def test_protocol2_empty_bytes(tmp_path: Path) -> None:
    # b"" is pickled as bytes() by protocols 0-2
    pack = load_bin(write(tmp_path / "empty.bin", ([b"", b"x"], [False]), protocol=2))
    assert pack.images == (b"", b"x")


def test_decode_pairs_lazily(tmp_path: Path) -> None:
    pack = load_bin(write(tmp_path / "lfw.bin", (IMAGES, ISSAME)))
    pairs = pack.iter_pairs()
    a, b, same = next(pairs)
    assert a.dtype == np.uint8 and a.shape == (3, 4, 3)
    np.testing.assert_array_equal(a[0, 0], [255, 0, 0])
    np.testing.assert_array_equal(b[2, 3], [0, 255, 0])
    assert same is True
    a, b, same = next(pairs)
    assert same is False and b[0, 0].tolist() == [9, 9, 9]
    fitted, _, _ = next(pack.iter_pairs(image_size=(6, 5)))
    assert fitted.shape == (6, 5, 3)


def test_pairs_are_fitted_as_in_training(tmp_path: Path) -> None:
    """A 3×4 image fitted to 3×3 loses its last column to the centre crop (round(3·3/3) = 3 of 4 columns from
    column 0); the reader used to squeeze all four columns in."""
    wide = np.zeros((3, 4, 3), np.uint8)
    wide[:, 3] = 255
    buffer = io.BytesIO()
    Image.fromarray(wide).save(buffer, format="PNG")
    pack = load_bin(write(tmp_path / "wide.bin", ([buffer.getvalue(), IMAGES[0]], [True])))
    fitted, _, _ = next(pack.iter_pairs(image_size=(3, 3)))
    np.testing.assert_array_equal(fitted, np.zeros((3, 3, 3), np.uint8))


def test_an_unreadable_image_names_the_pack_and_its_index(tmp_path: Path) -> None:
    pack = load_bin(write(tmp_path / "agedb_30.bin", ([IMAGES[0], b"not an image"], [False])))
    with pytest.raises(ImageDecodeError, match="agedb_30 image 1: cannot decode image"):
        next(pack.iter_pairs())


# --- refused content -------------------------------------------------------------------------------------------------


class _Payload:
    """Pickles as a call to ``func(*args)``: what a malicious pack would contain."""

    def __init__(self, func: object, *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return self.func, self.args


def _payloads(marker: Path) -> dict[str, _Payload]:
    return {
        "posix.system": _Payload(os.system, f"touch '{marker}'"),
        "io.open": _Payload(builtins.open, str(marker), "w"),
        "builtins.exec": _Payload(builtins.exec, f"open({str(marker)!r}, 'w').close()"),
    }


@pytest.mark.parametrize("refused", ["posix.system", "io.open", "builtins.exec"])
def test_malicious_pack_is_refused_and_never_runs(tmp_path: Path, refused: str) -> None:
    marker = tmp_path / "pwned"
    payload = _payloads(marker)[refused]
    blob = pickle.dumps(([IMAGES[0], payload], [True]), protocol=pickle.HIGHEST_PROTOCOL)
    assert refused.split(".")[1].encode() in blob  # the global really is in the stream

    # the payload is live: a plain pickle.loads runs it
    pickle.loads(blob)
    assert marker.exists()
    marker.unlink()

    path = tmp_path / "evil.bin"
    path.write_bytes(blob)
    with pytest.raises(ValueError) as info:
        load_bin(path)
    message = str(info.value)
    assert str(path) in message and f"global {refused}" in message
    assert not marker.exists()


def test_object_arrays_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "objects.bin", ([np.array([1, 2], dtype=object), IMAGES[0]], [True]), protocol=2)
    with pytest.raises(ValueError, match="numpy dtype 'O8'"):
        load_bin(path)


def test_codecs_encode_is_limited_to_latin1(tmp_path: Path) -> None:
    path = write(tmp_path / "rot13.bin", ([_Payload(codecs.encode, "abc", "rot13"), IMAGES[0]], [True]))
    with pytest.raises(ValueError, match=r"_codecs\.encode"):
        load_bin(path)


# --- malformed packs -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ((IMAGES[:3], ISSAME), "3 images for 2 pairs"),
        ((IMAGES, [1, 0]), "list of booleans"),
        ((IMAGES, ISSAME, "extra"), r"\(bins, issame_list\)"),
        (("not a list", ISSAME), "bins must be a list"),
        (([1, 2, 3, 4], ISSAME), "image 0 is a int"),
    ],
)
def test_malformed_packs(tmp_path: Path, content: object, message: str) -> None:
    path = write(tmp_path / "bad.bin", content)
    with pytest.raises(ValueError, match=message):
        load_bin(path)


def test_not_a_pickle(tmp_path: Path) -> None:
    path = tmp_path / "noise.bin"
    path.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match=r"noise\.bin"):
        load_bin(path)
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(pickle.dumps((IMAGES, ISSAME))[:-10])
    with pytest.raises(ValueError, match=r"truncated\.bin"):
        load_bin(truncated)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_other_numpy_dtypes_are_refused(tmp_path: Path, protocol: int) -> None:
    path = write(tmp_path / "floats.bin", ([np.zeros(3), IMAGES[0]], [True]), protocol)
    with pytest.raises(ValueError, match="numpy dtype 'f8'"):
        load_bin(path)


def test_calling_ndarray_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "alloc.bin", ([_Payload(np.ndarray, (4,)), IMAGES[0]], [True]))
    with pytest.raises(ValueError, match="numpy.ndarray"):
        load_bin(path)
