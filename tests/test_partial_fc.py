"""Partial FC: sharding, sampling, and equality with the full Eq. 6 softmax (one process and gloo × 2)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from eqface.losses import CombinedMarginLoss, NormalizedClassifier
from eqface.losses.partial_fc import PartialFC, shard_range
from tests.support.distributed import MARGIN, TinyNet, partial_fc_worker, problem, run_gloo, step_inputs

TOL = {"rtol": 1e-5, "atol": 1e-6}


def _reference(form: str) -> dict:
    """The full Eq. 6 on one process, over the whole batch."""
    p = problem()
    net = TinyNet(p)
    centres, labels = p["centres"], p["labels"]
    classifier = NormalizedClassifier(centres.shape[1], centres.shape[0])
    with torch.no_grad():
        classifier.weight.copy_(centres)
    emb, quality = step_inputs(form, *net(p["x"]), classifier.weight)
    cos = classifier(emb)
    loss = CombinedMarginLoss(MARGIN)(cos, labels, quality)
    loss.backward()
    return {
        "loss": loss.detach(),
        "correct": (cos.argmax(1) == labels),
        "emb_grad": emb.grad,
        "quality_grad": None if quality is None or not quality.requires_grad else quality.grad,
        "weight_grad": classifier.weight.grad,
        "net_grads": {k: v.grad for k, v in net.named_parameters()},
    }


def test_shards_cover_every_class_once() -> None:
    for classes, world in [(10, 2), (11, 4), (7, 7), (2_000_000, 8)]:
        ranges = [shard_range(classes, world, r) for r in range(world)]
        assert ranges[0][0] == 0
        assert all(a[0] + a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert sum(count for _, count in ranges) == classes
        assert max(c for _, c in ranges) - min(c for _, c in ranges) <= 1


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        PartialFC(4, 10, CombinedMarginLoss(MARGIN), sample_rate=0.0)
    with pytest.raises(ValueError, match="cannot be sharded"):
        PartialFC(4, 3, CombinedMarginLoss(MARGIN), rank=0, world_size=4)
    with pytest.raises(ValueError, match="full classifier"):
        PartialFC(4, 10, CombinedMarginLoss(MARGIN)).load_full(torch.zeros(9, 4))


@pytest.mark.parametrize("form", ["step1", "step2", "step3"])
def test_one_process_rate_1_equals_full_eq6(form: str) -> None:
    p = problem()
    ref = _reference(form)
    net = TinyNet(p)
    pfc = PartialFC(p["centres"].shape[1], p["centres"].shape[0], CombinedMarginLoss(MARGIN))
    pfc.load_full(p["centres"])
    emb, quality = net(p["x"])
    if form == "step2":
        emb = emb.detach()
        pfc.weight.requires_grad_(False)
    else:
        quality = None if form == "step1" else quality.detach()
    out = pfc(emb, p["labels"], quality)
    out.loss.backward()
    torch.testing.assert_close(out.loss.detach(), ref["loss"], **TOL)
    assert int(out.correct) == int(ref["correct"].sum())
    for name, param in net.named_parameters():
        torch.testing.assert_close(param.grad, ref["net_grads"][name], **TOL)
    torch.testing.assert_close(pfc.weight.grad, ref["weight_grad"], **TOL)


def test_sampling_keeps_every_positive_and_the_specified_count() -> None:
    torch.manual_seed(0)
    pfc = PartialFC(4, 100, CombinedMarginLoss(MARGIN), sample_rate=0.1, rank=1, world_size=2)  # classes 50..99
    labels = torch.tensor([-1, 3, 3, 17, 49, 0, -1])  # shard-local, −1 = on the other rank
    index = pfc.sample(labels)
    assert index.numel() == 5 and {0, 3, 17, 49} <= set(index.tolist())
    assert torch.equal(index, index.sort().values) and index.unique().numel() == 5
    many = torch.arange(8)  # more positives than int(0.1 · 50): all positives, nothing else
    assert torch.equal(pfc.sample(many), many)


SAMPLE_RATE, SAMPLED_CLASSES = 0.25, 40


@pytest.fixture(scope="module")
def gloo_runs(tmp_path_factory) -> dict[str, list[dict]]:
    """Both ranks' results per case: Step 1, Step 2, Step 3 with unequal batches (QWDF dropped samples on rank 1),
    and sampling at a rate < 1 — all from one spawn of two gloo processes."""
    cases = {
        "step1": ("equality", "step1", [6, 6]),
        "step2": ("equality", "step2", [6, 6]),
        "step3": ("equality", "step3", [7, 5]),
        "sampling": ("sampling", SAMPLE_RATE, SAMPLED_CLASSES),
        "gather": ("gather", 11),
    }
    ranks = run_gloo(partial_fc_worker, 2, tmp_path_factory.mktemp("gloo"), cases)
    return {name: [r[name] for r in ranks] for name in cases}


@pytest.mark.parametrize("form", ["step1", "step2", "step3"])
@pytest.mark.slow
def test_gloo_2_rate_1_loss_and_gradients_equal_full_eq6(gloo_runs: dict, form: str) -> None:
    ref, ranks = _reference(form), gloo_runs[form]
    sizes = [6, 6] if form != "step3" else [7, 5]
    starts = [0, sizes[0]]
    for rank, got in enumerate(ranks):
        rows = slice(starts[rank], starts[rank] + sizes[rank])
        torch.testing.assert_close(got["loss"], ref["loss"], **TOL)  # the same global loss on every rank
        assert int(got["correct"]) == int(ref["correct"][rows].sum())
        # The local samples' embeddings and s_i get W × ∂L/∂(·): DDP's mean over ranks then gives ∂L/∂θ.
        if ref["emb_grad"] is not None:
            torch.testing.assert_close(got["emb_grad"], 2 * ref["emb_grad"][rows], **TOL)
        if ref["quality_grad"] is not None:
            torch.testing.assert_close(got["quality_grad"], 2 * ref["quality_grad"][rows], **TOL)
        else:
            assert got["quality_grad"] is None
        if ref["weight_grad"] is not None:
            start = got["class_start"]
            shard = ref["weight_grad"][start : start + got["weight_grad"].shape[0]]
            torch.testing.assert_close(got["weight_grad"], shard, **TOL)
        else:
            assert got["weight_grad"] is None
        # What training sees: the DDP-averaged gradients of the replicated network equal the one-process ones.
        for name, grad in ref["net_grads"].items():
            if grad is None:
                assert got["net_grads"][name] is None, name
            else:
                torch.testing.assert_close(got["net_grads"][name], grad, **TOL)
    assert ranks[0]["class_start"] == 0 and ranks[1]["class_start"] == 5


@pytest.mark.slow
def test_gloo_2_sampling_keeps_positives_and_normalises_over_the_sampled_classes(gloo_runs: dict) -> None:
    classes, rate, ranks = SAMPLED_CLASSES, SAMPLE_RATE, gloo_runs["sampling"]
    p = problem(seed=1, n=8, classes=classes)
    for rank, got in enumerate(ranks):
        start, count = shard_range(classes, 2, rank)
        positives = {c for c in p["labels"].tolist() if start <= c < start + count}
        assert got["num_local"] == count
        assert got["classes"].numel() == max(int(rate * count), len(positives))
        assert positives <= set(got["classes"].tolist())
        assert all(start <= c < start + count for c in got["classes"].tolist())
    union = torch.cat([r["classes"] for r in ranks])
    assert union.numel() < classes  # negatives were dropped
    # The loss is Eq. 6 over exactly the sampled classes (the same on both ranks).
    emb = p["x"] @ p["proj"].T
    cos = F.linear(F.normalize(emb, dim=1), F.normalize(p["centres"][union], dim=1))
    expected = CombinedMarginLoss(MARGIN)(cos, torch.searchsorted(union, p["labels"]))
    for got in ranks:
        torch.testing.assert_close(got["loss"], expected, **TOL)


@pytest.mark.slow
def test_gloo_2_gather_reassembles_the_shards_in_class_order(gloo_runs: dict) -> None:
    first, second = gloo_runs["gather"]
    for rank in (first, second):
        assert torch.equal(rank["everyone"], rank["expected"])  # 11 classes: shards of 6 and 5
    assert torch.equal(first["to_0"], first["expected"]) and second["to_0"] is None
