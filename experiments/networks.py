"""The networks an experiment can measure: this project's torch model, or a grafted BYOR ONNX run by onnxruntime.

Both take the contract's input (RGB, (x − 127.5)/128, ``contract.normalize_pixels``) and give, per image, the raw
embedding (before L2 normalisation, for the embedding norm) and the EQFace quality, plus SER-FIQ's stochastic
embeddings: dropout (p 0.5, kept units scaled by 1/(1 − p), seeded masks) on the last spatial feature map, the
embedding head run once per pass. On the torch model that map is the backbone's; on the grafted ONNX it is the tap the
import exposed, and the head is the sub-graph tap → embedding extracted from the served graph.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from eqface import contract
from eqface.data.sources import FaceSource
from experiments.common import ModelRef, _relative, file_sha256, held_out_source

# Stochastic embeddings [N, passes, D] of contract inputs [N, 3, H, W]; successive calls draw fresh masks.
StochasticPasses = Callable[[np.ndarray, int], np.ndarray]
SERFIQ_DROPOUT = 0.5  # SER-FIQ's setting, as eqface.models.stochastic.DEFAULT_DROPOUT
GRAFTED_FILE = "model.onnx"  # where README's `eqface byor export DIR --out DIR/model.onnx` puts the served model


class MeasuredNetwork(Protocol):
    """What the experiments measure of a network; ``name``/``config``/``describe`` feed the report's provenance."""

    name: str
    config: dict[str, Any]

    @property
    def image_size(self) -> tuple[int, int]: ...

    def describe(self) -> str: ...

    def held_out(self, data_dir: Path) -> FaceSource:
        """The face pack identities this network's (quality) training held out, rebuilt from its recorded config."""
        ...

    def embed(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Contract inputs [N, 3, H, W] float32 → (raw embedding [N, D], quality [N]); deterministic."""
        ...

    def stochastic(self, seed: int) -> StochasticPasses:
        """A seeded source of SER-FIQ's stochastic embeddings (the same seed gives the same masks)."""
        ...


class TorchNetwork:
    """An EQFace torch model (``ModelRef``) in eval mode."""

    def __init__(self, ref: ModelRef) -> None:
        self.ref = ref
        self.name = ref.name
        self.config = ref.config

    @property
    def image_size(self) -> tuple[int, int]:
        return self.ref.image_size

    def describe(self) -> str:
        return self.ref.describe()

    def held_out(self, data_dir: Path) -> FaceSource:
        return held_out_source(self.ref, data_dir)

    def embed(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        net = self.ref.net.eval()
        with torch.no_grad():
            raw, fmap = net.embed_and_map(torch.from_numpy(x))
            return raw.numpy(), net.quality(fmap).squeeze(1).numpy()

    def stochastic(self, seed: int) -> StochasticPasses:
        import torch

        from eqface.models.stochastic import stochastic_embeddings

        generator = torch.Generator().manual_seed(seed)
        backbone = self.ref.net.backbone

        def passes(x: np.ndarray, n: int) -> np.ndarray:
            return stochastic_embeddings(backbone, torch.from_numpy(x), n, SERFIQ_DROPOUT, generator).numpy()

        return passes


class GraftedOnnxNetwork:
    """The served model of a BYOR folder (``eqface byor export``): the grafted ONNX, run by onnxruntime.

    One session computes the served outputs (unit embedding, quality) and, exposed as extra outputs of the same graph,
    the recogniser's raw embedding and its tap. SER-FIQ runs the sub-graph tap → raw embedding of that graph on the
    masked tap. The held-out identities are those of the folder's Step 2 (``step2/step2.json``).
    """

    def __init__(self, folder: str | Path, name: str, model_file: str | Path | None = None, threads: int = 0) -> None:
        import onnx
        from onnx import helper

        from eqface.byor.graft import grafted_name
        from eqface.byor.graph import BATCH_PARAM
        from eqface.byor.importer import METADATA_KEY
        from eqface.byor.recogniser import RecogniserManifest
        from eqface.byor.step2 import REPORT_FILE, STEP2_DIR
        from eqface.export.onnx import onnx_session

        self.folder = Path(folder)
        self.path = Path(model_file) if model_file is not None else self.folder / GRAFTED_FILE
        if not self.path.is_file():
            raise FileNotFoundError(f"no grafted model at {self.path} (run `eqface byor export {self.folder}` first)")
        step2 = self.folder / STEP2_DIR / REPORT_FILE
        if not step2.is_file():
            raise FileNotFoundError(f"{step2} missing: the held-out identities come from the folder's Step 2 report")
        self.name = name
        self.step2 = json.loads(step2.read_text())
        self.config = {"byor_step2": self.step2["run"]}
        model = onnx.load(str(self.path))
        meta = {p.key: p.value for p in model.metadata_props}
        if METADATA_KEY not in meta:
            raise ValueError(f"{self.path} is not a grafted BYOR model (no '{METADATA_KEY}' metadata)")
        self.manifest = RecogniserManifest.from_dict(json.loads(meta[METADATA_KEY]))
        self.sha256 = file_sha256(self.path)
        self._raw, self._tap = grafted_name(self.manifest.embedding_name), grafted_name(self.manifest.tap_name)
        fp32, m = onnx.TensorProto.FLOAT, self.manifest
        shapes = {self._raw: [BATCH_PARAM, m.embedding_size], self._tap: [BATCH_PARAM, *m.tap_shape]}
        # Typed graph outputs: the extractor needs the types of the sub-graph's ends (the graft keeps no value_info).
        model.graph.output.extend(helper.make_tensor_value_info(n, fp32, shape) for n, shape in shapes.items())
        head = onnx.utils.Extractor(model).extract_model([self._tap], [self._raw])
        self._session = onnx_session(model.SerializeToString(), threads=threads)
        self._head = onnx_session(head.SerializeToString(), threads=threads)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.manifest.image_size)  # type: ignore[return-value]

    def describe(self) -> str:
        m = self.manifest
        return (
            f"`{_relative(self.path)}` (grafted BYOR ONNX, sha256 {self.sha256[:12]}; recogniser "
            f"`{Path(m.source).name}` sha256 {m.source_sha256[:12]}, {m.normalisation.describe()}, tap '{m.tap_name}' "
            f"{list(m.tap_shape)}; onnxruntime)"
        )

    def held_out(self, data_dir: Path) -> FaceSource:
        from eqface import paths
        from eqface.byor.step2 import Step2Run, split_pack

        recorded = self.step2["run"]
        run = Step2Run(
            pack=recorded["pack"],
            eval_identities=int(recorded["eval_identities"]),
            min_images_per_identity=int(recorded["min_images_per_identity"]),
        )
        pack = Path(data_dir) / Path(run.pack.removeprefix(paths.PREFIX)).name  # as training_config: same file name
        _, held = split_pack(dataclasses.replace(run, pack=str(pack)))
        if held is None:
            raise ValueError(f"{self.folder}: its Step 2 held out no identities (eval_identities = 0)")
        return held

    def outputs(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of one run of the served graph: embedding, quality, raw (embedding) and tap."""
        names = [contract.EMBEDDING_NAME, contract.QUALITY_NAME, self._raw, self._tap]
        values = self._session.run(names, {contract.INPUT_NAME: x})
        return dict(zip(("embedding", "quality", "raw", "tap"), values, strict=True))

    def embed(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.outputs(x)
        return out["raw"], out["quality"][:, 0]

    def head(self, tap: np.ndarray) -> np.ndarray:
        """The recogniser's own layers after the tap: tap [N, ...] → raw embedding [N, D]."""
        return self._head.run([self._raw], {self._tap: np.ascontiguousarray(tap, dtype=np.float32)})[0]

    def stochastic(self, seed: int) -> StochasticPasses:
        rng = np.random.default_rng(seed)
        p = SERFIQ_DROPOUT

        def passes(x: np.ndarray, n: int) -> np.ndarray:
            if n < 2:
                raise ValueError(f"SER-FIQ needs at least 2 passes, got {n}")
            tap = self._session.run([self._tap], {contract.INPUT_NAME: x})[0]
            runs = [self.head(tap * (rng.random(tap.shape) >= p) / np.float32(1 - p)) for _ in range(n)]
            return np.stack(runs, axis=1)

        return passes


def as_network(model: ModelRef | MeasuredNetwork) -> MeasuredNetwork:
    """A ``ModelRef`` becomes a ``TorchNetwork``; a network is returned as it is."""
    return TorchNetwork(model) if isinstance(model, ModelRef) else model


def fitted_batches(images: Sequence[np.ndarray], size: tuple[int, int], batch: int = 64):
    """(uint8 images fitted to ``size`` [B, H, W, 3], their contract input [B, 3, H, W]) per batch of ``images``."""
    for start in range(0, len(images), batch):
        fitted = np.stack([contract.fit_to_size(img, size) for img in images[start : start + batch]])
        yield fitted, contract.normalize_pixels(fitted)


def unit_embeddings(network: MeasuredNetwork, images: Sequence[np.ndarray], batch: int = 64) -> np.ndarray:
    """L2-normalised embeddings [N, D] (float64) of uint8 images of any size, fitted to the network's input."""
    if not len(images):
        raise ValueError("no images to embed")
    parts = [network.embed(x)[0].astype(np.float64) for _, x in fitted_batches(images, network.image_size, batch)]
    raw = np.concatenate(parts)
    return raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-12)
