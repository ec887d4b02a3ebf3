"""``eqface config``: print the resolved configuration (every key that --set accepts)."""

from __future__ import annotations

import argparse

from eqface.cli.options import add_config_options, resolve_config
from eqface.config import to_json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "config",
        help="print the resolved configuration as JSON",
        description="Prints the configuration a preset plus --set overrides resolves to.",
    )
    add_config_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(to_json(resolve_config(args)))
    return 0
