"""The `eqface` command line: help for every option, one-line errors, the main job end to end (tiny config)."""

from __future__ import annotations

import json

import pytest

from eqface.cli import build_parser, main


def _subparsers():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


def test_every_option_of_every_command_has_help() -> None:
    for name, sub in _subparsers().items():
        for action in sub._actions:
            if action.dest == "help" or isinstance(action.choices, dict):
                continue
            assert action.help, f"eqface {name} {action.option_strings or action.dest} has no help text"


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["config", "--help"]])
def test_help_exits_cleanly(argv, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert "usage: eqface" in capsys.readouterr().out


def test_user_errors_are_one_line_messages(capsys, tmp_path) -> None:
    assert main(["config", "--set", "train.batch_size=many"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "eqface config: error: batch_size must be a int, got 'many'"
    assert main(["train", "--step", "2", "--out", str(tmp_path)]) == 2
    assert "needs --init" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "nope.json")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_config_prints_the_resolved_config(capsys) -> None:
    assert main(["config", "--preset", "test", "--set", "train.seed=9"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["train"]["seed"] == 9 and cfg["model"]["backbone"] == "tiny"


@pytest.mark.slow
def test_main_job_prints_accuracy_and_quality(tmp_path, capsys) -> None:
    assert main(["train", "--preset", "test", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "verification accuracy (10-fold)" in out and "quality histogram" in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert 0 <= summary["verification"]["accuracy"] <= 1 and summary["quality"]["n"] == 24
    # a single step from a checkpoint, into another folder
    assert main(["train", "--preset", "test", "--step", "2", "--init", str(tmp_path / "run" / "step1" / "final.pt"),
                 "--out", str(tmp_path / "step2"), "--no-summary"]) == 0
    assert (tmp_path / "step2" / "final.pt").is_file()
