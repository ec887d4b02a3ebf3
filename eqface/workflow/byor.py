"""The bring-your-own-recogniser pipeline's steps: a pretrained ONNX recogniser (local/PVC path, ``s3://``, ``gs://``)
→ import → Step 2 on the frozen recogniser → evaluate → grafted ONNX, on the faces of a prepared Dataset artifact.

The faces come from the prepare-data step (``eqface.workflow.dataset``), always packed (``faces.npz``), so that the
importer's normalisation check, Step 2 and the export's parity check read one local pack. The logic is
``eqface.byor``'s; these functions only fetch, place and describe files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eqface.byor.features import FeatureSpec
from eqface.byor.importer import CheckOptions, ImportOptions
from eqface.byor.norm_check import DEFAULT_MAX_DEFICIT, DEFAULT_MIN_AUC
from eqface.byor.normalisation import InputNormalisation
from eqface.byor.quality_training import Step2Config, step2_config
from eqface.byor.recogniser import DEFAULT_EVAL_IDENTITIES, DEFAULT_PACK, MANIFEST_FILE, MODEL_FILE
from eqface.byor.step2 import HEAD_FILE, REPORT_FILE, STEP2_DIR, Step2Run
from eqface.config import EQFaceConfig, merge
from eqface.workflow import storage
from eqface.workflow.dataset import data_config, read_manifest

_STEP2 = Step2Config()
_CHECK = CheckOptions()
_NORM = InputNormalisation()
DATA_DEFAULTS: dict[str, Any] = {
    "data_source": "npz",
    "data_location": DEFAULT_PACK,
    "max_identities": 0,
    "eval_identities": DEFAULT_EVAL_IDENTITIES,
}
FEATURES_FOLDER = "byor-features"  # under the work volume: feature caches keyed by recogniser, faces and spec


@dataclass(frozen=True)
class ByorForm:
    """The recogniser and Step 2 settings of the pipeline's form (the data and deployment parameters aside).

    Defaults are ``eqface import-onnx``'s and ``eqface byor step2``'s; empty strings and lists mean "find it in the
    graph".
    """

    input_mean: tuple[float, ...] = (_NORM.mean[0],)
    input_std: tuple[float, ...] = (_NORM.std[0],)
    channel_order: str = _NORM.channel_order
    tap: str = ""
    embedding_output: str = ""
    image_size: tuple[int, ...] = ()
    check_normalisation: bool = _CHECK.enabled
    check_faces: int = _CHECK.faces
    min_auc: float = DEFAULT_MIN_AUC
    max_deficit: float = DEFAULT_MAX_DEFICIT
    views: int = FeatureSpec().views
    epochs: int = _STEP2.schedule.epochs
    lr: float = _STEP2.schedule.lr
    batch_size: int = _STEP2.batch_size
    classifier: str = _STEP2.classifier
    classifier_epochs: int = _STEP2.classifier_epochs

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_mean", tuple(float(v) for v in self.input_mean))
        object.__setattr__(self, "input_std", tuple(float(v) for v in self.input_std))
        object.__setattr__(self, "image_size", tuple(int(v) for v in self.image_size))
        if self.image_size and len(self.image_size) != 2:
            raise ValueError(f"image_size is [H, W] or empty (read from the graph), got {list(self.image_size)}")
        if self.views < 1:
            raise ValueError(f"views must be at least 1 (the clean face), got {self.views}")
        self.import_options(DEFAULT_PACK, DEFAULT_EVAL_IDENTITIES)  # the normalisation's own checks
        step2_config(self.epochs, self.lr, self.batch_size, self.classifier, self.classifier_epochs)

    def import_options(self, pack: str, eval_identities: int) -> ImportOptions:
        check = CheckOptions(
            pack=pack,
            eval_identities=eval_identities,
            faces=self.check_faces,
            min_auc=self.min_auc,
            max_deficit=self.max_deficit,
            enabled=self.check_normalisation,
        )
        return ImportOptions(
            normalisation=InputNormalisation(self.input_mean, self.input_std, self.channel_order),
            tap=self.tap or None,
            output=self.embedding_output or None,
            image_size=(self.image_size[0], self.image_size[1]) if self.image_size else None,
            check=check,
        )

    def step2_run(self, pack: str, eval_identities: int) -> Step2Run:
        return Step2Run(
            pack=pack,
            eval_identities=eval_identities,
            features=FeatureSpec(views=self.views),
            train=step2_config(self.epochs, self.lr, self.batch_size, self.classifier, self.classifier_epochs),
        )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ByorForm:
        return cls(**json.loads(text))


def form_defaults() -> dict[str, Any]:
    """The pipeline form's defaults (lists where KFP wants JSON lists)."""
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(ByorForm()).items()}
    return {**DATA_DEFAULTS, **values}


def data_config_json(data_source: str, data_location: str, max_identities: int, eval_identities: int) -> str:
    """The configuration the prepare-data step reads: the project's defaults with the form's data section.

    Raises:
        ValueError: fewer than 2 held-out identities (the evaluate step compares faces across identities), or no
            location for a file source.
    """
    from eqface.config import to_json

    if eval_identities < 2:
        raise ValueError(f"eval_identities is {eval_identities}: evaluating needs at least 2 held-out identities")
    if data_source != "synthetic" and not data_location:
        raise ValueError(f"data_source={data_source} needs a data_location")
    data = {"source": data_source, "path": data_location, "max_identities": max_identities}
    return to_json(merge(EQFaceConfig(), {"data": {**data, "eval_identities": eval_identities}}))


def dataset_pack(dataset_dir: str | Path) -> tuple[str, int]:
    """(the packed faces file, held-out identities) of a prepared dataset.

    Raises:
        ValueError: the dataset was not packed (the pipeline prepares it with ``materialize=pack``).
    """
    if not read_manifest(dataset_dir).packed:
        raise ValueError(f"{dataset_dir} references its faces instead of packing them; prepare it with pack")
    data = data_config(dataset_dir)
    return data.path, data.eval_identities


def import_step(model_uri: str, dataset_dir: str | Path, form: ByorForm, out_dir: str | Path) -> dict[str, Any]:
    """Fetches the ONNX recogniser at ``model_uri`` and imports it into ``out_dir``; returns the artifact metadata."""
    from eqface.byor.importer import import_onnx

    pack, eval_identities = dataset_pack(dataset_dir)
    with tempfile.TemporaryDirectory(prefix="eqface-onnx-") as tmp:
        local = storage.fetch(model_uri, tmp)
        if local.is_dir():
            raise ValueError(f"{model_uri} is a folder; name the .onnx file")
        m = import_onnx(local, out_dir, form.import_options(pack, eval_identities))
    print(f"imported {model_uri}: {m.normalisation.describe()}, tap {m.tap_name} {list(m.tap_shape)}", flush=True)
    return {
        "source_uri": model_uri,
        "source_sha256": m.source_sha256,
        "image_size": list(m.image_size),
        "embedding_size": m.embedding_size,
        "tap": m.tap_name,
        "normalisation": m.normalisation.describe(),
        "check_auc": m.check.get("auc", -1.0) if m.check.get("passed") else -1.0,
    }


def step2_step(
    recogniser_dir: str | Path,
    dataset_dir: str | Path,
    form: ByorForm,
    out_dir: str | Path,
    feature_root: str = "",
) -> dict[str, Any]:
    """Step 2 on the imported recogniser; ``out_dir`` gets the recogniser, the trained head and ``step2.json``.

    The feature caches (large: every training face's tap, per view) stay out of the artifact: in
    ``<feature_root>/byor-features/<key>`` when a work volume is given (a retried pod, or a later run on the same
    recogniser, faces and feature settings, reuses them), else in a temporary folder.
    """
    from eqface.byor.step2 import run_step2

    pack, eval_identities = dataset_pack(dataset_dir)
    run = form.step2_run(pack, eval_identities)
    recogniser_dir, out_dir = Path(recogniser_dir), Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="eqface-byor-") as tmp:
        work = (
            Path(tmp)
            if not feature_root
            else Path(feature_root) / FEATURES_FOLDER / _cache_key(recogniser_dir, dataset_dir, run)
        )
        work.mkdir(parents=True, exist_ok=True)
        for name in (MODEL_FILE, MANIFEST_FILE):
            shutil.copy2(recogniser_dir / name, work / name)
        report = run_step2(work, run)
        (out_dir / STEP2_DIR).mkdir(parents=True, exist_ok=True)
        for name in (MODEL_FILE, MANIFEST_FILE):
            shutil.copy2(recogniser_dir / name, out_dir / name)
        for name in (HEAD_FILE, REPORT_FILE):
            shutil.copy2(work / STEP2_DIR / name, out_dir / STEP2_DIR / name)
    held = report.get("held_out", {})
    return {
        "train_faces": report["train_faces"],
        "train_identities": report["train_identities"],
        "feature_seconds": round(report["feature_seconds"], 1),
        "step2_seconds": round(report["step2_seconds"], 1),
        **{f"held_out_{k}": v for k, v in held.items() if isinstance(v, int | float)},
    }


def _cache_key(recogniser_dir: Path, dataset_dir: str | Path, run: Step2Run) -> str:
    manifest = json.loads((recogniser_dir / MANIFEST_FILE).read_text())
    parts = {
        "recogniser": manifest["source_sha256"],
        "tap": manifest["tap_name"],
        "normalisation": manifest["normalisation"],
        "faces": read_manifest(dataset_dir).fingerprint,
        "eval_identities": run.eval_identities,
        "features": dataclasses.asdict(run.features),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def evaluate_step(
    model_dir: str | Path,
    dataset_dir: str | Path,
    report_html: str | Path,
    report_markdown: str | Path,
    accuracy_threshold: float,
    min_quality_std: float = 0.0,
):
    """The recogniser and its trained head on the held-out identities of the prepared faces: metrics, reports and
    the deploy gate (``eqface.workflow.evaluation.gate``, the training pipeline's).

    Returns:
        :class:`eqface.workflow.evaluation.EvaluationOutputs` (with the ROC of every held-out pair).
    """
    from eqface.byor.evaluation import held_out_report
    from eqface.byor.quality_training import load_head, predict_quality
    from eqface.byor.recogniser import Recogniser
    from eqface.byor.step2 import split_pack
    from eqface.contract import fit_to_size
    from eqface.eval.roc import roc_curve
    from eqface.workflow import report
    from eqface.workflow.evaluation import FINAL, EvaluationOutputs, gate

    pack, eval_identities = dataset_pack(dataset_dir)
    _, held = split_pack(Step2Run(pack=pack, eval_identities=eval_identities))
    if held is None:
        raise ValueError("no held-out identities to evaluate on")
    recogniser = Recogniser(model_dir)
    size = recogniser.manifest.image_size
    raw, tap = recogniser.embed(np.stack([fit_to_size(held.image(i), size) for i in range(len(held))]))
    quality = predict_quality(load_head(Path(model_dir) / STEP2_DIR / HEAD_FILE), tap.reshape(len(tap), -1))
    figures = held_out_report(raw, quality, held.labels)
    values = {
        "verification_accuracy": figures.accuracy_10fold,
        "verification_auc": figures.auc,
        "quality_mean": figures.quality_mean,
        "quality_std": figures.quality_std,
        "heldout_identities": float(figures.identities),
        "heldout_images": float(figures.faces),
        "edc_pauc_quality": figures.pauc_quality,
        "edc_pauc_embedding_norm": figures.pauc_embedding_norm,
        "edc_pauc_random": figures.pauc_random,
    }
    if figures.tar_at_far_1e3 is not None:
        values["tar_at_far_1e-3"] = figures.tar_at_far_1e3
    passed, lines = gate(values, accuracy_threshold, min_quality_std)
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    a, b = np.triu_indices(len(unit), 1)
    roc = roc_curve((unit @ unit.T)[a, b], held.labels[a] == held.labels[b])  # every pair, as held_out_report
    manifest = recogniser.manifest
    run = {"recogniser": manifest.source, "normalisation": manifest.normalisation.describe(), "tap": manifest.tap_name}
    tables = [
        report.Table("Recogniser", ("setting", "value"), [(k, str(v)) for k, v in run.items()]),
        report.Table("Deployment gate", ("check",), [(line,) for line in lines]),
        report.Table("Held-out identities", ("measure", "value"), [(k, f"{v:.4f}") for k, v in values.items()]),
    ]
    verdict = "PASSED" if passed else "FAILED"
    title = f"EQFace on an imported recogniser: {100 * figures.accuracy_10fold:.2f}% verification, {verdict} gate"
    for path in (report_html, report_markdown):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(report_html).write_text(report.render_html(title, tables, {}))
    Path(report_markdown).write_text(report.render_markdown(title, tables))
    keep = np.unique(np.linspace(1, len(roc.far) - 1, num=min(200, len(roc.far) - 1)).astype(int))
    return EvaluationOutputs(
        metrics=values,
        roc_fpr=roc.far[keep].tolist(),
        roc_tpr=roc.tar[keep].tolist(),
        roc_thresholds=np.clip(roc.thresholds[keep], -1.0, 1.0).tolist(),
        passed=passed,
        gate_lines=lines,
        chosen=FINAL,  # one candidate: the imported recogniser with its quality head is the final model
    )


def export_step(model_dir: str | Path, dataset_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """The grafted contract model ``out_dir/model.onnx`` (what the deploy step serves), parity-checked on the first
    faces of the prepared pack; returns the artifact metadata."""
    from eqface.byor.export import export_grafted, pack_faces
    from eqface.byor.recogniser import Recogniser
    from eqface.workflow.export import ONNX_FILE

    pack, _ = dataset_pack(dataset_dir)
    out = Path(out_dir) / ONNX_FILE
    size = Recogniser(model_dir).manifest.image_size
    parity = export_grafted(model_dir, out, pack_faces(pack, size))
    print(f"exported {out}: min cosine {parity.min_cosine:.7f}, max quality diff {parity.max_quality_diff:.1e}")
    return {
        "file": ONNX_FILE,
        "format": "onnx",
        "image_height": size[0],
        "image_width": size[1],
        "size_bytes": out.stat().st_size,
        "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
        "parity_min_cosine": parity.min_cosine,
        "parity_max_quality_diff": parity.max_quality_diff,
        "parity_images": parity.faces,
    }
