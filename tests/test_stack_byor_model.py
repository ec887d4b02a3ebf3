"""The main job's BYOR model cache (``eqface.stack.byor_model``): keyed by the inputs' bytes and every setting, reused
only when complete, rebuilt on request. (The build itself — import-onnx → byor step2 → byor export — is the BYOR
commands' own tests' subject; here its three commands are checked for the settings they carry.)"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from eqface.stack import byor_model
from eqface.stack.byor_model import ByorBuild, build_dir, cache_key, cached_model, ensure_model


@pytest.fixture
def build(tmp_path) -> ByorBuild:
    (tmp_path / "rec.onnx").write_bytes(b"recogniser v1")
    (tmp_path / "pack.npz").write_bytes(b"faces v1")
    return ByorBuild(recogniser=str(tmp_path / "rec.onnx"), pack=str(tmp_path / "pack.npz"))


def test_key_follows_every_input(build, tmp_path):
    key = cache_key(build)
    assert len(key) == 16 and cache_key(build) == key  # stable
    assert cache_key(dataclasses.replace(build, epochs=5)) != key
    assert cache_key(dataclasses.replace(build, mean=(127.5,))) != key
    (tmp_path / "pack.npz").write_bytes(b"faces v2")
    assert cache_key(build) != key
    (tmp_path / "pack.npz").write_bytes(b"faces v1")
    (tmp_path / "rec.onnx").write_bytes(b"recogniser v2")
    assert cache_key(build) != key


def test_missing_input_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("EQFACE_SHARED_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="shared data folder was not found"):
        cache_key(ByorBuild())


def test_only_a_complete_build_is_reused(build, tmp_path):
    runs = tmp_path / "runs"
    assert cached_model(runs, build) is None
    folder = build_dir(runs, build)
    (folder / byor_model.IMPORT_DIR).mkdir(parents=True)  # an interrupted build
    assert cached_model(runs, build) is None
    (folder / byor_model.BUILD_FILE).write_text("{}")
    assert cached_model(runs, build) == folder / byor_model.MODEL_FILE
    lines: list[str] = []
    assert ensure_model(runs, build, out=lines.append) == folder / byor_model.MODEL_FILE
    assert "reusing" in lines[0] and "--rebuild" in lines[0]
    assert "no Step 2 report" in lines[1]
    step2 = folder / byor_model.IMPORT_DIR / "step2"
    step2.mkdir()
    held_out = {"identities": 40, "faces": 710, "accuracy_10fold": 0.9507, "auc": 0.9773, "tar_at_far_1e3": 0.851}
    held_out |= {"pauc_quality": 0.0196, "pauc_embedding_norm": 0.0207, "pauc_random": 0.0306}
    (step2 / "step2.json").write_text(json.dumps({"held_out": held_out}))
    assert "verification accuracy 0.951" in byor_model.held_out_line(folder)
    assert cached_model(runs, dataclasses.replace(build, views=2)) is None  # another setting: another folder


def test_commands_carry_the_settings(build, tmp_path):
    commands = dict(byor_model._commands(dataclasses.replace(build, bgr=True, views=2, epochs=3), tmp_path / "b"))
    assert list(commands) == ["import", "step2", "export"]
    assert commands["import"][:2] == ["import-onnx", str(Path(build.recogniser))]
    assert {"--bgr", "127.0", "128.0"} <= set(commands["import"])
    step2 = commands["step2"]
    assert step2[step2.index("--views") + 1] == "2" and step2[step2.index("--epochs") + 1] == "3"
    assert step2[step2.index("--eval-identities") + 1] == "40"
    assert commands["export"][-3:] == [str(tmp_path / "b" / "model.onnx"), "--parity-data", build.pack]
