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
    serve_cmd,
    stack_cmd,
    stream_cmd,
    train_cmd,
)

COMMANDS = [
    train_cmd,
    config_cmd,
    export_cmd,
    import_onnx_cmd,
    byor_cmd,
    serve_cmd,
    pipeline_cmd,
    stack_cmd,
    stream_cmd,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.service_args = [*args.service_args, *extra]
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"eqface {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"eqface {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
