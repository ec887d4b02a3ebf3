"""Options shared by several commands: choosing and overriding a configuration."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from eqface.config import PRESETS, EQFaceConfig, apply_overrides, config_from_dict, preset


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
