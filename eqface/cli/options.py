"""Options shared by several commands (choosing and overriding a configuration) and how every command's help shows
its defaults."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from eqface.config import PRESETS, EQFaceConfig, apply_overrides, config_from_dict, preset

_SHOWS_DEFAULT = re.compile(r"%\(default\)|\(default\b")


def has_default(action: argparse.Action) -> bool:
    """Whether ``action`` has a default value worth showing: not None, not a flag's False, not an empty list."""
    if action.nargs == 0 or action.default is None or action.default is argparse.SUPPRESS:
        return False
    return action.default != []


class HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default once, as argparse will use it: appended when the help text names none, left out
    when there is no value to show (argparse's ArgumentDefaultsHelpFormatter prints "(default: None)" for options
    whose default is decided later, and a second default after help texts that already name one)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if _SHOWS_DEFAULT.search(text) or not has_default(action):
            return text
        return f"{text} (default: %(default)s)"


class CommandParser(argparse.ArgumentParser):
    """The parser of ``eqface`` and, through ``add_subparsers`` (which builds sub-parsers of the parent's class), of
    every sub-command: all of them format their help with ``HelpFormatter`` unless a command asks otherwise."""

    def __init__(self, *args, formatter_class: type[argparse.HelpFormatter] = HelpFormatter, **kwargs) -> None:
        super().__init__(*args, formatter_class=formatter_class, **kwargs)


def add_config_options(parser: argparse.ArgumentParser, default_preset: str = "demo") -> None:
    group = parser.add_argument_group("configuration")
    group.add_argument(
        "--preset",
        default=default_preset,
        choices=sorted(PRESETS),
        help="starting configuration (default: %(default)s). demo: tiny backbone on built-in synthetic faces, a few "
        "minutes on a CPU; test: seconds; mobilefacenet-celeba: pretrained MobileFaceNet + CelebA pack from the "
        "shared data folder (../shared/data or $EQFACE_SHARED_DATA); paper: IResNet-100 with the paper's schedules",
    )
    group.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="a config.json written by an earlier run (replaces --preset)",
    )
    group.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one field, e.g. --set train.step1.lr=0.05 --set model.backbone=iresnet50 "
        "(repeatable; values are JSON, e.g. train.step1.milestones=[6,9]; see `eqface config` for every key)",
    )


def resolve_config(args: argparse.Namespace) -> EQFaceConfig:
    if args.config is not None:
        if not args.config.is_file():
            raise FileNotFoundError(f"config file not found: {args.config}")
        cfg = config_from_dict(json.loads(args.config.read_text()))
    else:
        cfg = preset(args.preset)
    return apply_overrides(cfg, args.overrides)
