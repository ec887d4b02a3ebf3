"""Smoke tests of the experiments: each core function on a tiny trained model and tiny synthetic faces.

They check the outputs (report.md, results.json, PNGs) and that every reported number is finite, not the figures of
the full experiments (those run from the command line on the real packs; see experiments/results/).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from eqface.config import SyntheticConfig, preset
from eqface.data.synthetic import generate_synthetic
from eqface.train.distributed import DistEnv
from eqface.train.plan import train_all_steps
from experiments.common import ModelRef, load_model_ref


@pytest.fixture(autouse=True)
def few_bootstrap_replicates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "experiments.common.BOOTSTRAP_REPS", 20
    )  # the experiments use 200; the smoke test checks plumbing


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny_run")
    train_all_steps(preset("test"), out, DistEnv())
    return out


@pytest.fixture(scope="module")
def tiny_model(tiny_run: Path) -> ModelRef:
    return load_model_ref(tiny_run / "model.pt", "tiny model.pt")


@pytest.fixture(scope="module")
def faces() -> tuple[list[np.ndarray], np.ndarray]:
    source = generate_synthetic(
        SyntheticConfig(identities=6, images_per_identity=8, degraded_fraction=0.3), image_size=(32, 32), seed=5
    )
    return [source.image(i) for i in range(len(source))], source.labels


def _numbers(obj: Any):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, (list, tuple, np.ndarray)):
        for v in obj:
            yield from _numbers(v)
    elif isinstance(obj, (float, np.floating, int, np.integer)) and not isinstance(obj, bool):
        yield float(obj)


def _check_outputs(out: Path, figures: dict[str, Any], pngs: int) -> dict[str, Any]:
    report = (out / "report.md").read_text()
    assert report.startswith("# ") and "Runtime:" in report and "## Protocol" in report
    stored = json.loads((out / "results.json").read_text())
    assert stored["runtime_s"] >= 0 and len(stored["pngs"]) == pngs
    for name in stored["pngs"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({name})" in report
    numbers = list(_numbers(figures))
    assert numbers and all(math.isfinite(x) for x in numbers)
    return stored


def test_e1_illumination(tiny_run: Path, tiny_model: ModelRef, faces, tmp_path: Path) -> None:
    from experiments.e1_illumination import MEASURES, run_e1

    images, labels = faces
    angles = np.random.default_rng(1).uniform(0, 130, len(labels))  # seed 0 would equal the random baseline
    step2 = load_model_ref(tiny_run / "step2-1" / "final.pt", "step2-1")
    figures = run_e1([tiny_model, step2], images, labels, angles, tmp_path, start_fmr=1e-2)
    stored = _check_outputs(tmp_path, figures, pngs=6)  # EDC, histogram and scatter per model
    result = stored["models"]["tiny model.pt"]
    assert -1 <= result["quality"]["spearman"] <= 1 and len(result["quality"]["bands"]) == 4
    assert set(result["edc"]) == set(MEASURES)


def test_e2_qw_training(tiny_run: Path, tiny_model: ModelRef, faces, tmp_path: Path) -> None:
    from experiments.e2_qw_training import EvalSet, run_e2

    images, labels = faces
    models = [
        load_model_ref(tiny_run / "step1" / "final.pt", "step1"),
        load_model_ref(tiny_run / "step3-1" / "final.pt", "step3 QW"),
    ]
    figures = run_e2(models, [EvalSet("synthetic set", images, labels, "tiny")], tmp_path)
    stored = _check_outputs(tmp_path, figures, pngs=1)
    r = stored["results"]["synthetic set"]["step3 QW"]
    assert 0 <= r["accuracy"] <= 1 and r["tar_at_far"]["1e-05"] is None  # too few impostors: not reachable
    assert set(stored["comparisons"]["synthetic set"]) == {"step3 QW vs step1"}
    assert "`train.step3_quality`" in (tmp_path / "report.md").read_text()


def test_e2_compares_every_arm_with_the_start_and_qw_with_each_control() -> None:
    from experiments.e2_qw_training import ARMS, START, comparison_pairs

    pairs = comparison_pairs([START, *ARMS.values()])
    assert [(START, arm) for arm in ARMS.values()] == pairs[: len(ARMS)]
    controls = {a for a, b in pairs[len(ARMS) :] if b == ARMS["qw"]}
    assert controls == {ARMS["none"], ARMS["mean"], ARMS["shuffled"]}
    assert (ARMS["qw"], ARMS["qwdf"]) in pairs


def test_e3_templates_reports_both_families_and_the_paper_beside_ours(
    tiny_model: ModelRef, faces, tmp_path: Path
) -> None:
    from experiments.degraded_frames import FAMILY_LABELS, HELD_OUT, TRAINING, family_kinds
    from experiments.e3_templates import run_e3
    from experiments.paper_claims import SECTION

    images, labels = faces
    figures = run_e3(tiny_model, images, labels, tmp_path, frames=2, repeats=2, qwfaf_th=0.25)
    stored = _check_outputs(tmp_path, figures, pngs=2)  # one ROC per family
    report = (tmp_path / "report.md").read_text()
    assert set(stored["families"]) == {TRAINING, HELD_OUT}
    for family, fig in stored["families"].items():
        assert fig["label"] == FAMILY_LABELS[family] and f"## {FAMILY_LABELS[family]} —" in report
        assert fig["templates"] == 2 * 6 * 4
        table = fig["table_markdown"]
        assert "| QWFAF, s_th=0.3 |" in table and "| QWFAF, s_th=0.25 (calibrated) |" in table and "n/r" in table
        seen = set(fig["quality_by_condition"]) - {"clean"}
        assert seen and seen <= set(family_kinds(family))  # each family's frames carry its own kinds only
    assert set(stored["held_out_verdict"]["QWFA"]) == {TRAINING, HELD_OUT}
    assert f"## {SECTION}" in report and "98.18" in report and "90.22" in report  # YTF and IJB-C figures quoted
    assert "training-distribution degradations (the generator Step 2 trained on)" in report


def test_e4_progressive_chooses_on_validation_identities_and_reports_on_disjoint_test_ones(
    tiny_model: ModelRef, faces, tmp_path: Path
) -> None:
    from experiments.degraded_frames import FAMILY_LABELS, HELD_OUT, TRAINING
    from experiments.e4_progressive import choose_pair, run_e4, sweep_variants
    from experiments.e4_rows import (
        BASELINE,
        NO_GATES,
        RUNNING_MEAN,
        STRICT,
        chosen_name,
        given_name,
        paper_name,
    )
    from experiments.paper_claims import SECTION

    images, labels = faces
    figures = run_e4(
        tiny_model,
        images,
        labels,
        tmp_path,
        refs=2,
        queries=3,
        repeats=2,
        fars=(1e-2, 1e-1),
        select_far=1e-1,
        given=(0.4, 0.25),
    )
    stored = _check_outputs(tmp_path, figures, pngs=2)  # one test ROC per family
    report = (tmp_path / "report.md").read_text()
    val_ids, test_ids = set(stored["split"]["validation_ids"]), set(stored["split"]["test_ids"])
    assert val_ids and test_ids and not val_ids & test_ids and val_ids | test_ids == set(labels.tolist())
    assert set(stored["families"]) == {TRAINING, HELD_OUT}
    for family, fig in stored["families"].items():
        val, test = fig["validation"], fig["test"]
        assert set(val["identities"]) == val_ids and set(test["identities"]) == test_ids
        assert set(val["results"]) == {BASELINE, *sweep_variants()}  # the sweep runs on validation only
        expected = {BASELINE, chosen_name(fig["chosen"]), paper_name(), given_name(0.4, 0.25)}
        assert set(test["results"]) == expected | {NO_GATES, RUNNING_MEAN, STRICT}
        val_results = {
            n: {"tar_at_far": {float(k): v for k, v in r["tar_at_far"].items()}, "auc": r["auc"]}
            for n, r in val["results"].items()
        }
        assert fig["chosen"] == choose_pair(val_results, val["merged_fraction"], 1e-1)
        assert f"{chosen_name(fig['chosen'])} vs {BASELINE}" in test["comparisons"]
        assert f"{chosen_name(fig['chosen'])} vs {RUNNING_MEAN}" in test["comparisons"]  # what quality adds
        assert f"## {FAMILY_LABELS[family]} — validation identities" in report
        assert f"## {FAMILY_LABELS[family]} — test identities" in report
    assert f"## {SECTION}" in report and "f_th = 0.5, and s_th = 0.3" in report


def test_e4_choice_breaks_ties_by_fewer_fusions_and_ranks_unreachable_last() -> None:
    from experiments.e4_progressive import choose_pair, sweep_variants

    names = list(sweep_variants())
    results = {n: {"tar_at_far": {1e-3: 0.5}, "auc": 0.9} for n in names}
    merged = {n: 0.5 for n in names}
    results[names[0]]["tar_at_far"][1e-3] = None  # unreachable: never chosen over a reachable TAR
    results[names[1]]["auc"] = 0.99  # higher AUC but merges more …
    merged[names[1]] = 0.6
    merged[names[2]] = 0.1  # … than the pair that fuses the fewest frames at equal TAR
    assert choose_pair(results, merged, 1e-3) == names[2]
    results[names[3]]["tar_at_far"][1e-3] = 0.51
    assert choose_pair(results, merged, 1e-3) == names[3]


def test_e4_identity_split_is_disjoint_seeded_and_needs_four_identities() -> None:
    from experiments.e4_progressive import split_identities

    labels = np.repeat(np.arange(10), 3)
    val, test = split_identities(labels, 0.5, np.random.default_rng(7))
    assert len(val) == len(test) == 5 and not set(val) & set(test) and set(val) | set(test) == set(range(10))
    again = split_identities(labels, 0.5, np.random.default_rng(7))
    assert np.array_equal(val, again[0]) and np.array_equal(test, again[1])
    with pytest.raises(ValueError, match="at least 4 identities"):
        split_identities(np.repeat(np.arange(3), 2), 0.5, np.random.default_rng(0))


def test_degraded_frames_draw_the_same_frames_in_both_families_and_degrade_them_differently() -> None:
    from eqface.eval import conditions
    from experiments.degraded_frames import CLEAN, HELD_OUT, TRAINING, degrade_frame, draw_degradations, family_kinds

    idx = np.arange(200)
    train = draw_degradations(idx, 0.5, (0.4, 1.0), np.random.default_rng(3), TRAINING)
    held = draw_degradations(idx, 0.5, (0.4, 1.0), np.random.default_rng(3), HELD_OUT)
    assert np.array_equal(train.kind == CLEAN, held.kind == CLEAN) and (held.kind != CLEAN).any()
    assert set(held.kind[held.kind != CLEAN]) == set(range(len(family_kinds(HELD_OUT))))
    img = np.random.default_rng(0).integers(0, 256, (112, 96, 3), dtype=np.uint8)
    jpeg = family_kinds(HELD_OUT).index("jpeg")
    out = degrade_frame(img, HELD_OUT, jpeg, 0.0, np.random.default_rng(1))
    assert np.array_equal(out, conditions.apply(img, "jpeg", np.random.default_rng(1))) and not np.array_equal(out, img)
    with pytest.raises(ValueError, match="unknown degradation family"):
        draw_degradations(idx, 0.5, (0.4, 1.0), np.random.default_rng(3), "camera")


def test_fig4_quality_grid(tiny_model: ModelRef, faces, tmp_path: Path) -> None:
    from experiments.fig4_quality_grid import run_fig4

    images, labels = faces
    figures = run_fig4(tiny_model, images, [f"face{i}" for i in range(len(images))], tmp_path, shown=12)
    stored = _check_outputs(tmp_path, figures, pngs=1)
    q = [f["quality"] for f in stored["all_sorted"]]
    assert q == sorted(q) and stored["shown"] == 12


def test_fiqa_benchmark(tiny_model: ModelRef, faces, tmp_path: Path) -> None:
    from experiments.fiqa_benchmark import CLEAN, MEASURES, FaceSet, degraded_copy, load_attempts, run_benchmark

    images, labels = faces
    clean = FaceSet("celeba_heldout", images, labels, np.full(len(labels), CLEAN), "synthetic stand-in")
    degraded = degraded_copy(clean, seed=3)
    assert len(set(degraded.condition)) > 2 and len(degraded.images) == len(images)
    figures = run_benchmark(tiny_model, [clean, degraded], tmp_path, replicates=20, passes=3, start_fmr=1e-2)
    stored = _check_outputs(tmp_path, figures, pngs=2)
    for name in ("celeba_heldout", "celeba_heldout_degraded"):
        measures = stored["datasets"][name]["measures"]
        assert set(measures) == set(MEASURES)
        for values in measures.values():
            for limit in ("0.2", "0.3"):
                low, high = values[f"ci_{limit}"]
                assert low <= values[f"pauc_{limit}"] <= high
        assert set(stored["eqface_beats"][name]) == {"embedding_norm", "ser_fiq"}
        oracle, measures = stored["datasets"][name]["image_oracle"], stored["datasets"][name]["measures"]
        assert oracle["pauc_0.2"] <= min(m["pauc_0.2"] for m in measures.values())  # it reads the answers
        assert set(stored["attainable"][name]) == {"embedding_norm", "ser_fiq"}
    # The run becomes an attempt of a search; the next run tables it, and refuses an attempt without its note.
    attempts = tmp_path / "attempts"
    (attempts / "first").mkdir(parents=True)
    (attempts / "first" / "results.json").write_text((tmp_path / "results.json").read_text())
    with pytest.raises(ValueError, match="note.md"):
        load_attempts(attempts)
    (attempts / "first" / "note.md").write_text("the flat head, as the official code")
    out = tmp_path / "second"
    figures = run_benchmark(
        tiny_model, [clean], out, replicates=20, passes=3, start_fmr=1e-2, attempts=load_attempts(attempts)
    )
    first = figures["attempts"]["first"]["datasets"]["celeba_heldout"]
    assert first["eqface"] == stored["datasets"]["celeba_heldout"]["measures"]["eqface"]["pauc_0.2"]
    assert "the flat head, as the official code" in (out / "report.md").read_text()


def test_a_model_trained_on_a_shared_pack_finds_it_in_data_dir(tiny_model: ModelRef, tmp_path: Path) -> None:
    from dataclasses import replace

    from eqface.config import apply_overrides, to_dict
    from experiments.common import training_config

    for path in ("shared:celeba_wild_subset_rgb112.npz", "../shared/data/celeba_wild_subset_rgb112.npz"):
        trained = to_dict(apply_overrides(preset("test"), ["data.source=npz", f"data.path={path}"]))
        cfg = training_config(replace(tiny_model, config=trained), tmp_path)
        assert cfg.data.path == str(tmp_path / "celeba_wild_subset_rgb112.npz")


def test_data_dir_defaults_to_the_shared_data_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from eqface import paths
    from experiments.common import experiment_parser

    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path))
    assert experiment_parser(None, "x").parse_args([]).data_dir == tmp_path
    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path / "absent"))
    with pytest.raises(SystemExit):  # no shared folder: --data-dir must be given
        experiment_parser(None, "x").parse_args([])
    assert experiment_parser(None, "x").parse_args(["--data-dir", "d"]).data_dir == Path("d")


def test_the_image_oracle_ranks_images_by_their_failing_genuine_comparisons() -> None:
    from experiments.fiqa_benchmark import image_oracle_quality

    # images 0, 1, 2 of one identity, 3 of another; pairs (0,1) fails, (0,2) passes, (1,2) fails
    a, b = np.array([0, 0, 1, 0]), np.array([1, 2, 2, 3])
    same = np.array([True, True, True, False])
    scores = np.array([0.1, 0.9, 0.2, 0.95])
    q = image_oracle_quality(scores, same, a, b, threshold=0.5, n_images=4)
    np.testing.assert_allclose(q, [0.5, 0.0, 0.5, 1.0])


# --- The imported (BYOR) recogniser as a measured network, and the BYOR vs own comparison ---------------------------


@pytest.fixture(scope="module")
def tiny_byor(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A tiny IResNet exported to ONNX, imported, Step 2 on a synthetic 112×112 pack (6 identities held out) and
    grafted to ``model.onnx``; with the pack's images (identity = index // 10)."""
    from eqface.byor.export import export_grafted
    from eqface.byor.features import FeatureSpec
    from eqface.byor.importer import CheckOptions, ImportOptions, import_onnx
    from eqface.byor.quality_training import Step2Config
    from eqface.byor.step2 import Step2Run, run_step2
    from eqface.config import ScheduleConfig
    from tests.support.byor import export_backbone, tiny_iresnet

    folder = tmp_path_factory.mktemp("tiny_byor")
    source = generate_synthetic(
        SyntheticConfig(identities=12, images_per_identity=10, degraded_fraction=0.3), image_size=(112, 112), seed=2
    )
    images = np.stack([source.image(i) for i in range(len(source))])
    pack = folder / "pack.npz"
    np.savez(pack, images=images, identity=source.labels, filename=[f"{i:04d}.png" for i in range(len(images))])
    onnx_file = export_backbone(tiny_iresnet(), folder / "iresnet.onnx")
    import_onnx(onnx_file, folder / "byor", ImportOptions(check=CheckOptions(enabled=False)))
    train = Step2Config(schedule=ScheduleConfig(epochs=1, lr=0.01, milestones=()), batch_size=16, hidden=8)
    run_step2(folder / "byor", Step2Run(pack=str(pack), eval_identities=6, features=FeatureSpec(views=2), train=train))
    export_grafted(folder / "byor", folder / "byor" / "model.onnx", images)
    return folder / "byor", images


def test_byor_network_measures_what_the_served_model_and_the_recogniser_give(tiny_byor, tmp_path: Path) -> None:
    from eqface import contract
    from eqface.byor.recogniser import Recogniser
    from eqface.export.onnx import onnx_session, run_onnx
    from experiments.networks import GraftedOnnxNetwork, unit_embeddings

    folder, images = tiny_byor
    network = GraftedOnnxNetwork(folder, "imported")
    assert network.image_size == (112, 112) and "grafted BYOR ONNX" in network.describe()
    x = contract.normalize_pixels(images[:10])
    raw, quality = network.embed(x)
    served_emb, served_q = run_onnx(onnx_session(folder / "model.onnx"), x)  # the served file, run as it is
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), served_emb, atol=1e-6)
    np.testing.assert_allclose(quality, served_q[:, 0], atol=1e-7)
    own_raw, tap = Recogniser(folder).embed(images[:10])  # the imported recogniser: same raw embedding and tap
    np.testing.assert_allclose(raw, own_raw, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(network.head(tap), own_raw, rtol=1e-4, atol=1e-5)  # the extracted tap → embedding
    np.testing.assert_allclose(unit_embeddings(network, list(images[:10]), batch=3), served_emb, atol=1e-6)
    held = network.held_out(folder.parent)  # Step 2 held out the last 6 of 12 identities of the pack
    assert held.num_classes == 6 and len(held) == 60 and held.names[0].endswith("0060.png")
    with pytest.raises(FileNotFoundError, match="byor export"):
        GraftedOnnxNetwork(folder, "x", tmp_path / "absent.onnx")


def test_byor_serfiq_is_seeded_and_is_not_the_embedding_norm(tiny_byor) -> None:
    from scipy.stats import spearmanr

    from eqface import contract
    from eqface.eval.serfiq import serfiq_quality
    from experiments.fiqa_benchmark import measure
    from experiments.networks import GraftedOnnxNetwork

    folder, images = tiny_byor
    network = GraftedOnnxNetwork(folder, "imported")
    x = contract.normalize_pixels(images[:20])
    first, again, other = (network.stochastic(seed)(x, 4) for seed in (1, 1, 2))
    assert first.shape == (20, 4, 32)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    assert not np.allclose(first[:, 0], first[:, 1])  # every pass draws its own mask
    measured = measure(network, list(images), seed=1, passes=6, batch=16)
    q = measured.qualities
    np.testing.assert_array_equal(
        q["ser_fiq"], measure(network, list(images), seed=1, passes=6, batch=16).qualities["ser_fiq"]
    )
    assert np.all((q["ser_fiq"] > 0) & (q["ser_fiq"] <= 1)) and q["ser_fiq"].std() > 0
    assert abs(spearmanr(q["ser_fiq"], q["embedding_norm"]).statistic) < 0.99
    first_batch = contract.normalize_pixels(images[:16])  # measure's masks: one seeded stream, batch after batch
    np.testing.assert_allclose(q["ser_fiq"][:16], serfiq_quality(network.stochastic(1)(first_batch, 6)), rtol=1e-12)


def test_torch_network_measures_as_the_model_embeds(tiny_model: ModelRef, faces) -> None:
    import torch

    from eqface import contract
    from eqface.eval.serfiq import serfiq_quality
    from eqface.models.stochastic import stochastic_embeddings
    from experiments.common import embed_images
    from experiments.fiqa_benchmark import measure

    images, _ = faces
    measured = measure(tiny_model, images, seed=4, passes=3, batch=len(images))
    want = embed_images(tiny_model.net, images, tiny_model.image_size)
    np.testing.assert_allclose(measured.emb, want.emb, atol=1e-6)
    np.testing.assert_allclose(measured.qualities["eqface"], want.quality, atol=1e-7)
    np.testing.assert_allclose(measured.qualities["embedding_norm"], want.raw_norm, rtol=1e-6)
    x = torch.from_numpy(contract.preprocess(images, tiny_model.image_size))
    generator = torch.Generator().manual_seed(4)
    ser = serfiq_quality(stochastic_embeddings(tiny_model.net.backbone, x, 3, generator=generator).numpy())
    np.testing.assert_allclose(measured.qualities["ser_fiq"], ser, rtol=1e-12)


def test_byor_comparison_shares_the_held_out_faces() -> None:
    from experiments.byor_comparison import shared_held_out

    source = generate_synthetic(SyntheticConfig(identities=4, images_per_identity=3), image_size=(16, 16), seed=1)
    same, info = shared_held_out(source, source)
    assert same is source and info["identical"] and info["used_faces"] == 12
    part, info = shared_held_out(source.subset(np.arange(3, 12)), source)  # the own run held out 3 ids of the 4
    assert not info["identical"] and info["used_faces"] == 9 and info["used_identities"] == 3
    assert list(part.names) == list(source.names[3:])
    with pytest.raises(ValueError, match="no face in common"):
        shared_held_out(source.subset(np.arange(0, 3)), source.subset(np.arange(3, 12)))


def test_byor_comparison(tiny_byor, tiny_model: ModelRef, tmp_path: Path) -> None:
    from experiments.byor_comparison import IMPORTED, OWN, run_comparison
    from experiments.fiqa_benchmark import CLEAN, FaceSet, degraded_copy
    from experiments.networks import GraftedOnnxNetwork, TorchNetwork

    folder, images = tiny_byor
    labels = np.arange(len(images)) // 10
    clean = FaceSet("celeba_heldout", list(images), labels, np.full(len(labels), CLEAN), "synthetic stand-in")
    imported, own = GraftedOnnxNetwork(folder, IMPORTED), TorchNetwork(tiny_model)
    sets = [clean, degraded_copy(clean, seed=3)]
    settings = {"held_out_note": "synthetic", "replicates": 20, "passes": 3, "start_fmr": 1e-2}
    figures = run_comparison(imported, own, sets, tmp_path, **settings)
    stored = _check_outputs(tmp_path, figures, pngs=2)
    assert set(stored["recognition"]) == {"celeba_heldout"}  # recognition on the clean sets only
    r = stored["recognition"]["celeba_heldout"]
    assert 0.5 <= r[IMPORTED]["accuracy"] <= 1 and 0 <= r[OWN]["auc"] <= 1
    assert r["imported_minus_own"]["auc_diff"] == pytest.approx(r[IMPORTED]["auc"] - r[OWN]["auc"])
    for key in (IMPORTED, OWN):
        sub = json.loads((tmp_path / f"fiqa_{key}" / "results.json").read_text())
        assert set(sub["datasets"]) == {"celeba_heldout", "celeba_heldout_degraded"}
        assert (
            stored["fiqa"][key]["datasets"]["celeba_heldout"]["measures"]
            == sub["datasets"]["celeba_heldout"]["measures"]
        )
    report = (tmp_path / "report.md").read_text()
    assert "grafted BYOR ONNX" in report and "## Recognition" in report
    # A stored FIQA run of the own network is reused, but only for the same network, settings and sets.
    stored = json.loads((tmp_path / f"fiqa_{OWN}" / "results.json").read_text())
    again = run_comparison(imported, own, sets, tmp_path / "again", own_fiqa=stored, **settings)
    assert again["fiqa"][OWN]["datasets"] == stored["datasets"] and not (tmp_path / "again" / f"fiqa_{OWN}").exists()
    with pytest.raises(ValueError, match="replicates 20 ≠ 30"):
        run_comparison(imported, own, sets, tmp_path / "x", own_fiqa=stored, **{**settings, "replicates": 30})
    with pytest.raises(ValueError, match="datasets"):
        run_comparison(imported, own, sets[:1], tmp_path / "x", own_fiqa=stored, **settings)
    with pytest.raises(ValueError, match="file hash"):
        run_comparison(imported, imported, sets, tmp_path / "x", own_fiqa=stored, **settings)
