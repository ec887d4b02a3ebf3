"""The monitoring half of ``manifests/`` the local stack loads: the PrometheusRule's rule groups as a Prometheus rules
file, and the job names its scrape configuration must use."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from eqface.stack.manifests import MANIFESTS_DIR, find, render

RULE_NAME = "eqface"
# Job names the ServiceMonitors produce (jobLabel: app.kubernetes.io/name); the local stack scrapes under the same.
TRITON_JOB = "eqface-triton"
AGGREGATOR_JOB = "eqface-aggregator"


def rule_groups(manifests_dir: Path = MANIFESTS_DIR) -> list[dict[str, Any]]:
    """``spec.groups`` of the PrometheusRule as the base renders it: a Prometheus rules file's ``groups``."""
    rendered = render(manifests_dir / "base" / "monitoring")
    return find(rendered, "PrometheusRule", RULE_NAME)["spec"]["groups"]


def write_rules_file(path: Path, manifests_dir: Path = MANIFESTS_DIR) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({"groups": rule_groups(manifests_dir)}, sort_keys=False))
    return path
