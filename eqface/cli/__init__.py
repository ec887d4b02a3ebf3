"""The ``eqface`` command line: one sub-module per command group, each adding its own sub-parser."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from eqface import __version__
from eqface.cli import (
    byor_cmd,
    config_cmd,
    export_cmd,
    import_onnx_cmd,
    pipeline_cmd,
    quantize_cmd,
    serve_cmd,
    stack_cmd,
    stream_cmd,
    train_cmd,
)
from eqface.cli.options import CommandParser

COMMANDS = [
    train_cmd,
    config_cmd,
    export_cmd,
    quantize_cmd,
    import_onnx_cmd,
    byor_cmd,
    serve_cmd,
    pipeline_cmd,
    stack_cmd,
    stream_cmd,
]


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="eqface",
        description="EQFace: face recognition with an explicit quality score — training, evaluation, serving.",
    )
    parser.add_argument("--version", action="version", version=f"eqface {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command is None:  # bare `eqface`: show what it can do rather than an error
        parser.print_help()
        return 0
    if extra:
        if not hasattr(args, "service_args"):  # only `serve aggregator` hands its options on
            _command_parser(parser, args.command).error(f"unrecognized arguments: {' '.join(extra)}")
        args.service_args = [*args.service_args, *extra]
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"eqface {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"eqface {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        grpc = sys.modules.get("grpc")  # an RpcError can only come from a command that imported grpc
        if grpc is None or not isinstance(exc, grpc.RpcError):
            raise
        print(f"eqface {args.command}: error: {_rpc_error(exc)}", file=sys.stderr)
        return 1


def _command_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The sub-command's own parser, so that an error shows that command's usage, not the top-level one."""
    for action in parser._actions:  # argparse keeps sub-parsers only there
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return action.choices[command]
    return parser


if __name__ == "__main__":
    sys.exit(main())


def _rpc_error(exc) -> str:
    """One line for a failed gRPC call: its status, its details and, when the server could not be reached, why."""
    code, details = exc.code(), exc.details()
    line = f"{code.name}: {details}"
    if code.name == "UNAVAILABLE":
        line += " (is the server up? one that serves TLS closes plaintext connections: pass --ca and --cert/--key or"
        line += " --token-file)"
    elif code.name == "UNAUTHENTICATED":
        line += " (pass --ca and --cert/--key or --token-file)"
    return line
