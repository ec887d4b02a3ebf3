"""The `eqface` command line: help for every option, one-line errors, the main job end to end (tiny config)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import subprocess
import sys

import pytest

from components.cluster import ClusterSettings
from eqface.cli import build_parser, main
from eqface.cli.options import has_default


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


_SHOWN_DEFAULT = re.compile(r"\(default:?\s+([^;)]*)")


def _option_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The option's help text as `--help` prints it, on one line."""
    return " ".join(parser._get_formatter()._expand_help(action).split())


def test_every_option_shows_the_default_argparse_uses_once() -> None:
    checked = 0
    for name, parser in _all_parsers():
        for action in parser._actions:
            if not action.help or action.help is argparse.SUPPRESS or isinstance(action.choices, dict):
                continue
            text, where = _option_help(parser, action), f"{name} {'/'.join(action.option_strings) or action.dest}"
            shown = _SHOWN_DEFAULT.findall(text)
            assert len(shown) <= 1, f"{where} shows {len(shown)} defaults: {text}"
            if has_default(action):
                value = str(action.default)
                assert value in text, f"{where} does not show its default {value!r}: {text}"
                assert not shown or shown[0].startswith(value), f"{where} shows {shown[0]!r}, uses {value!r}"
                checked += 1
            else:  # nothing to show, or a default decided at run time and described in words
                assert not shown or shown[0].split(",")[0].strip() not in ("None", "False", "[]"), (where, text)
    assert checked >= 60


def test_pipeline_compile_shows_and_uses_the_cluster_defaults() -> None:
    parser = dict(_all_parsers())["eqface pipeline compile"]
    args = parser.parse_args([])
    cluster = ClusterSettings()
    by_dest = {a.dest: a for a in parser._actions}
    for field in dataclasses.fields(ClusterSettings):
        if field.name in by_dest:
            assert getattr(args, field.name) == getattr(cluster, field.name), field.name
            shown = _SHOWN_DEFAULT.findall(_option_help(parser, by_dest[field.name]))
            assert by_dest[field.name].nargs == 0 or shown == [str(getattr(cluster, field.name))], (field.name, shown)
    assert {"image", "data_pvc", "work_pvc", "models_pvc", "train_memory", "train_cpu", "train_retries"} <= set(by_dest)


def test_the_help_formatter_shows_one_true_default() -> None:
    from eqface.cli.options import CommandParser

    parser = CommandParser(prog="x")
    parser.add_argument("--a", default=3, help="plain")
    parser.add_argument("--b", help="decided later (default: the newest run)")
    parser.add_argument("--c", default="v", help="named already (default: %(default)s)")
    parser.add_argument("--d", action="store_true", help="flag")
    parser.add_argument("--e", help="no default")
    text = " ".join(parser.format_help().split())
    assert "plain (default: 3)" in text and "decided later (default: the newest run)" in text
    assert text.count("(default: v)") == 1 and "flag --e" in text and "None" not in text and "False" not in text


def test_a_failed_grpc_call_is_one_line_with_a_hint(capsys, monkeypatch) -> None:
    """A command whose server call fails (here: nothing listens, as when a plaintext client meets a TLS server that
    closes the connection) prints the status, its details and what to check, never a traceback."""
    from eqface.cli import stream_cmd
    from eqface.processes import free_port
    from eqface.service.client import AggregatorClient
    from eqface.service.v1 import aggregator_pb2 as pb

    def call_a_closed_port(args: argparse.Namespace) -> int:
        with AggregatorClient(f"127.0.0.1:{free_port()}", reconnect_timeout_s=0) as client:
            client.call("ListSubjects", pb.ListSubjectsRequest(), timeout_s=2)
        return 0

    monkeypatch.setattr(stream_cmd, "run", call_a_closed_port)
    assert main(["stream", "video.mp4", "--server", "127.0.0.1:1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("eqface stream: error: UNAVAILABLE: ") and "pass --ca and --cert/--key" in err
    assert "Traceback" not in err and err.count("\n") == 1
