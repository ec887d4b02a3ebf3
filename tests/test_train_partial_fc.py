"""Steps 1, 2 and 3 with Partial FC on two gloo ranks through the step runner; its checkpoints re-shard to any size."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from eqface.config import MarginConfig, apply_overrides, preset
from eqface.losses import CombinedMarginLoss, NormalizedClassifier, PartialFC
from eqface.models import build_model
from eqface.train import checkpoint
from eqface.train.classifier_state import build_classifier
from eqface.train.precision import resolve_precision
from eqface.train.schedule import build_optimizer
from eqface.train.steps import Step, StepModel
from eqface.train.trainer import _restore
from tests.support.distributed import run_gloo, training_worker

# QWDF at 0.5 in Step 3: ranks drop different numbers of samples, so the gathered batches have unequal parts.
OVERRIDES = [
    "train.classifier.kind=partial_fc",
    "train.classifier.sample_rate=0.5",
    "train.batch_size=8",
    "train.qwdf_threshold=0.5",
]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gloo_run(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("pfc-train")
    return out, run_gloo(training_worker, 2, out, OVERRIDES)


def _epochs(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_steps_1_2_3_train_end_to_end_with_world_size_2(gloo_run) -> None:
    out, ranks = gloo_run
    step1, step2 = checkpoint.load(out / "step1" / "final.pt"), checkpoint.load(out / "step2" / "final.pt")
    step3 = checkpoint.load(out / "step3" / "final.pt")
    assert step1["classifier"]["weight"].shape == (5, 32)  # the full centres, gathered from the two shards
    for rank in ranks:  # every rank returned the same full matrix as the file (it is the next step's init)
        assert torch.equal(rank["step1"], step1["classifier"]["weight"])
    assert torch.equal(step2["classifier"]["weight"], step1["classifier"]["weight"])  # Step 2 freezes the centres
    assert not torch.equal(step3["classifier"]["weight"], step2["classifier"]["weight"])  # Step 3 retrains them
    assert all(torch.equal(rank["step3"], step3["classifier"]["weight"]) for rank in ranks)
    first, second = _epochs(out / "step1" / "log.jsonl"), _epochs(out / "step2" / "log.jsonl")
    third = _epochs(out / "step3" / "log.jsonl")
    assert len(first) == 2 and len(second) == 1 and len(third) == 2
    assert all(math.isfinite(e["loss"]) and 0 <= e["accuracy"] <= 1 for e in first + second + third)
    assert 0 < second[0]["quality_mean"] < 1
    backbone = [k for k in step1["net"] if k.startswith("backbone.")]
    assert all(torch.equal(step1["net"][k], step2["net"][k]) for k in backbone)
    assert any(not torch.equal(step1["net"][k], step2["net"][k]) for k in step2["net"] if k.startswith("quality."))


def test_the_checkpoint_holds_every_shard_and_momentum_in_class_order(gloo_run) -> None:
    out, ranks = gloo_run
    state = checkpoint.load(out / "resume.pt")
    weight = state["classifier"]["weight"]
    classifier_index = max(state["optimizer"]["state"])  # the classifier is the last parameter of a StepModel
    momentum = state["optimizer"]["state"][classifier_index]["momentum_buffer"]
    assert weight.shape == momentum.shape == (5, 32)
    for rank in ranks:
        rows = slice(rank["class_start"], rank["class_start"] + rank["shard"].shape[0])
        assert torch.equal(weight[rows], rank["shard"]) and torch.equal(momentum[rows], rank["momentum"])


def test_a_world_size_2_checkpoint_resumes_on_one_process(gloo_run) -> None:
    out, ranks = gloo_run
    cfg = apply_overrides(preset("test"), OVERRIDES)
    margin = CombinedMarginLoss(cfg.margin)
    model = StepModel(Step.ONE, build_model(cfg.model), build_classifier(cfg, 5, margin), margin)
    assert isinstance(model.classifier, PartialFC) and model.classifier.num_local == 5
    optimizer = build_optimizer(model.parameters(), cfg.train.step1)
    _restore(out / "resume.pt", model, optimizer, Step.ONE, resolve_precision("fp32", "cpu"))
    torch.testing.assert_close(model.classifier.weight.detach(), torch.cat([r["shard"] for r in ranks]), rtol=0, atol=0)
    torch.testing.assert_close(
        optimizer.state[model.classifier.weight]["momentum_buffer"],
        torch.cat([r["momentum"] for r in ranks]),
        rtol=0,
        atol=0,
    )


def test_classifier_files_load_at_any_world_size_or_say_why_not(gloo_run) -> None:
    out, _ = gloo_run
    full = checkpoint.load(out / "step1" / "final.pt")["classifier"]
    margin = CombinedMarginLoss(MarginConfig())
    third = PartialFC(32, 5, margin, rank=1, world_size=3)  # classes 2..3
    third.load_state_dict(full)
    assert torch.equal(third.weight.detach(), full["weight"][2:4])
    plain = NormalizedClassifier(32, 5)
    plain.load_state_dict(full)  # a full classifier reads a Partial FC run's file as it is
    with pytest.raises(ValueError, match="full classifier tensor has 6 rows"):
        PartialFC(32, 6, margin, rank=0, world_size=2).load_state_dict(full)
