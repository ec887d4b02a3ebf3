"""Reader for insightface verification packs (lfw.bin, cfp_fp.bin, agedb_30.bin, ...), without trusting the pickle.

A pack is ``pickle.dump((bins, issame_list), f)``: ``bins`` holds 2·P encoded images (JPEG/PNG bytes, or uint8 numpy
arrays of those bytes in some re-packed files), pair i being ``(bins[2i], bins[2i+1])``, and ``issame_list`` P booleans.
Unpickling can run any callable the file names, so ``SafeBinUnpickler`` resolves only the few globals such files need
and refuses every other one; a refused file raises ``ValueError`` before anything it names is called.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from eqface import contract
from eqface.data.decode import FILE_LIMITS, decode_image

_ALLOWED_DTYPES = frozenset({"u1", "b1"})  # image bytes and booleans; anything else (objects above all) is refused


class RefusedPickleContent(pickle.UnpicklingError):
    """Raised inside the unpickler for a global (or numpy dtype) that a verification pack has no reason to hold."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    # Protocol 0-2 pickles written by Python 3 store bytes as _codecs.encode(<latin-1 text>, "latin1").
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise RefusedPickleContent(f"_codecs.encode with arguments other than (str, 'latin1'): {encoding!r}")
    return text.encode("latin-1")


def _empty_bytes(*args: Any) -> bytes:
    # Protocol 0-2 pickles store b"" as bytes(); any argument (a size, an iterable) is not what such files contain.
    if args:
        raise RefusedPickleContent("bytes() called with arguments")
    return b""


class _DtypeName:
    """Stands in for ``numpy.dtype`` while unpickling: keeps only a vetted name; the pickled state is never applied."""

    def __init__(self, name: Any, *_flags: Any) -> None:
        if not isinstance(name, str) or name not in _ALLOWED_DTYPES:
            raise RefusedPickleContent(f"numpy dtype {name!r} (only {sorted(_ALLOWED_DTYPES)} are accepted)")
        self.dtype = np.dtype(name)

    def __setstate__(self, state: Any) -> None:
        pass  # byte order and flags of a one-byte dtype carry nothing; numpy must not receive file-made flags


def _raw(data: Any) -> bytes:
    if isinstance(data, str):  # Python 2 str read back as latin-1 text
        return data.encode("latin-1")
    if isinstance(data, (bytes, bytearray, memoryview, pickle.PickleBuffer)):
        return bytes(data)
    raise RefusedPickleContent(f"array data of type {type(data).__name__}")


class _PickledArray:
    """Stands in for ``numpy.core.multiarray._reconstruct``: rebuilds the array from its raw bytes (``frombuffer``)."""

    def __init__(self, *_args: Any) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        *_, shape, dtype, _fortran, data = state  # (version, shape, dtype, is_fortran, data); old files omit version
        if not isinstance(dtype, _DtypeName):
            raise RefusedPickleContent(f"array state with dtype {type(dtype).__name__}")
        self.array = _frombuffer(data, dtype, shape)


def _frombuffer(data: Any, dtype: Any, shape: Any, order: str = "C") -> np.ndarray:
    # Protocol-5 pickles reference numpy.core.numeric._frombuffer(buffer, dtype, shape, order).
    if not isinstance(dtype, _DtypeName):
        raise RefusedPickleContent(f"array with dtype {type(dtype).__name__}")
    return np.frombuffer(_raw(data), dtype=dtype.dtype).reshape(shape, order=order).copy()


def _scalar(dtype: Any, data: Any) -> np.generic:
    if not isinstance(dtype, _DtypeName):
        raise RefusedPickleContent(f"scalar with dtype {type(dtype).__name__}")
    return np.frombuffer(_raw(data), dtype=dtype.dtype)[0]


def _ndarray_type(*_args: Any) -> None:
    # Array pickles only pass numpy.ndarray to _reconstruct as the type to build; calling it is never legitimate.
    raise RefusedPickleContent("a call to numpy.ndarray")


def _numpy_globals() -> dict[tuple[str, str], Callable[..., Any]]:
    """Inert stand-ins for the numpy callables that numpy's pickles of plain arrays and scalars reference."""
    found: dict[tuple[str, str], Callable[..., Any]] = {
        ("numpy", "ndarray"): _ndarray_type,
        ("numpy", "dtype"): _DtypeName,
    }
    for core in ("numpy.core", "numpy._core"):  # the module path in the file depends on the numpy that wrote it
        found[(f"{core}.multiarray", "_reconstruct")] = _PickledArray
        found[(f"{core}.multiarray", "scalar")] = _scalar
        found[(f"{core}.numeric", "_frombuffer")] = _frombuffer
    return found


_NUMPY_GLOBALS = _numpy_globals()


class SafeBinUnpickler(pickle.Unpickler):
    """An Unpickler whose ``find_class`` resolves only what verification packs need.

    Allowed: bytes written by old protocols (``_codecs.encode`` restricted to latin-1 text, ``bytes()`` without
    arguments) and plain numpy arrays/scalars of dtype uint8 or bool. Containers, bools, ints and strings need no
    global. Everything else raises ``RefusedPickleContent``.
    """

    _BASE_GLOBALS: ClassVar[dict[tuple[str, str], Callable[..., Any]]] = {
        ("_codecs", "encode"): _latin1_bytes,
        ("builtins", "bytes"): _empty_bytes,
        ("__builtin__", "bytes"): _empty_bytes,
    }

    def find_class(self, module: str, name: str) -> Any:
        allowed = self._BASE_GLOBALS.get((module, name)) or _NUMPY_GLOBALS.get((module, name))
        if allowed is None:
            raise RefusedPickleContent(f"global {module}.{name}")
        return allowed


@dataclass(frozen=True, eq=False)
class VerificationBin:
    """A loaded verification pack: encoded images and pair labels; images are decoded only on request.

    Attributes:
        name: the file's stem, e.g. ``lfw``.
        images: 2·P encoded images; pair i is ``(images[2i], images[2i + 1])``.
        issame: ground truth of each pair, bool [P].
    """

    name: str
    images: tuple[bytes, ...]
    issame: np.ndarray

    def __len__(self) -> int:
        return len(self.issame)

    def pair_bytes(self, i: int) -> tuple[bytes, bytes, bool]:
        """The encoded images of pair i and its label."""
        return self.images[2 * i], self.images[2 * i + 1], bool(self.issame[i])

    def iter_pairs(self, image_size: tuple[int, int] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray, bool]]:
        """Decodes pairs one at a time: ``(rgb_a, rgb_b, issame)`` with uint8 [H, W, 3] images, fitted to
        ``image_size`` = (H, W) by ``contract.fit_to_size`` (as in training) when given.

        Raises:
            ImageDecodeError: an image that is not readable (the message names the pack and the image's index).
        """
        for i in range(len(self)):
            a, b, same = self.pair_bytes(i)
            rgb_a = decode_image(a, f"{self.name} image {2 * i}", FILE_LIMITS)
            rgb_b = decode_image(b, f"{self.name} image {2 * i + 1}", FILE_LIMITS)
            if image_size is not None:
                rgb_a, rgb_b = contract.fit_to_size(rgb_a, image_size), contract.fit_to_size(rgb_b, image_size)
            yield rgb_a, rgb_b, same


def _as_image_bytes(item: Any, path: Path, index: int) -> bytes:
    if isinstance(item, _PickledArray):
        item = item.array
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, str):  # Python 2 str, read back as latin-1 text
        return item.encode("latin-1")
    if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 1:
        return item.tobytes()
    raise ValueError(f"{path}: image {index} is a {type(item).__name__}, expected encoded image bytes")


def _as_issame(raw: Any, path: Path) -> np.ndarray:
    if isinstance(raw, _PickledArray):
        raw = raw.array
    items = list(raw) if isinstance(raw, (list, tuple, np.ndarray)) else None
    if items is None or not all(isinstance(x, (bool, np.bool_)) for x in items):
        raise ValueError(f"{path}: issame_list must be a list of booleans")
    return np.array(items, dtype=bool)


def load_bin(path: str | Path) -> VerificationBin:
    """Loads an insightface verification pack through ``SafeBinUnpickler`` (images stay encoded).

    Raises:
        ValueError: when the file names a refused global (the message names the file and the global; nothing it
            names has been called), is not a pickle, or does not have the (2·P images, P booleans) layout.
    """
    path = Path(path)
    with path.open("rb") as f:
        try:
            # latin-1 maps Python 2 str (the original packs) one-to-one to text; _as_image_bytes maps it back.
            content = SafeBinUnpickler(f, encoding="latin1").load()
        except RefusedPickleContent as error:
            raise ValueError(
                f"{path}: refused to unpickle {error.what}; verification packs hold only image bytes and booleans"
            ) from None
        except (pickle.UnpicklingError, EOFError, TypeError, AttributeError, IndexError, KeyError, ValueError) as error:
            raise ValueError(f"{path}: not a readable verification pack: {error}") from error
    if not isinstance(content, (tuple, list)) or len(content) != 2:
        raise ValueError(f"{path}: expected a pickled (bins, issame_list) pair, got {type(content).__name__}")
    bins, raw_issame = content
    if not isinstance(bins, (list, tuple)):
        # a malformed file is a bad value for the caller, not a wrong argument type: ValueError, as everywhere here
        raise ValueError(f"{path}: bins must be a list, got {type(bins).__name__}")  # noqa: TRY004
    issame = _as_issame(raw_issame, path)
    if len(bins) != 2 * len(issame):
        raise ValueError(f"{path}: {len(bins)} images for {len(issame)} pairs (expected {2 * len(issame)})")
    images = tuple(_as_image_bytes(item, path, i) for i, item in enumerate(bins))
    return VerificationBin(name=path.stem, images=images, issame=issame)
