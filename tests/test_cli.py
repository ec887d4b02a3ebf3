"""The `eqface` command line: help for every option, one-line errors, the main job end to end (tiny config)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from eqface.cli import build_parser, main


def _all_parsers(parser=None, prefix="eqface"):
    """Every (command path, parser) pair, nested sub-commands included."""
    parser = parser or build_parser()
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action.choices, dict):
            for name, sub in action.choices.items():
                yield from _all_parsers(sub, f"{prefix} {name}")


def test_every_option_of_every_command_has_help() -> None:
    commands = dict(_all_parsers())
    assert {"eqface train", "eqface serve triton", "eqface serve aggregator", "eqface export"} <= set(commands)
    for name, parser in commands.items():
        for action in parser._actions:
            if action.dest == "help" or isinstance(action.choices, dict):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest} has no help text"


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["config", "--help"], ["serve", "triton", "--help"]])
def test_help_exits_cleanly(argv, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert "usage: eqface" in capsys.readouterr().out


def test_serve_aggregator_passes_its_options_to_the_service(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["serve", "aggregator", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--store" in out and "--triton-url" in out and "s_th" in out


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
    assert (
        main(
            [
                "train",
                "--preset",
                "test",
                "--step",
                "2",
                "--init",
                str(tmp_path / "run" / "step1" / "final.pt"),
                "--out",
                str(tmp_path / "step2"),
                "--no-summary",
            ]
        )
        == 0
    )
    assert (tmp_path / "step2" / "final.pt").is_file()


def test_version_and_bare_command_print_instead_of_failing(capsys) -> None:
    from eqface import __version__

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"eqface {__version__}"
    assert main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: eqface") and "COMMAND" in out and "train" in out


def test_python_m_eqface_is_the_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "eqface", "--version"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0 and result.stdout.startswith("eqface "), result.stderr


def test_errors_show_the_sub_command_usage_and_argument_problems_come_first(capsys, tmp_path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--epochs", "3"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("usage: eqface train") and "--epochs 3" in err
    # no --server and no running stack: the missing video is still what the user hears about
    assert main(["stream", str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "video not found" in err and "server" not in err
