"""PromQL and dashboard helpers the monitoring tests use: every query of the Grafana dashboard and the alert rules,
Grafana's variable substitution, and the operands of an alert's expression."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eqface.stack.dashboard import DASHBOARD_FILE
from eqface.stack.manifests import MANIFESTS_DIR
from eqface.stack.monitoring import rule_groups

MONITORING_DIR = MANIFESTS_DIR / "base" / "monitoring"
ALERT_TESTS_FILE = MANIFESTS_DIR / "tests" / "alerts.test.yaml"


@dataclass(frozen=True)
class Query:
    """One PromQL expression and where it comes from (a dashboard panel's target, a recording rule, an alert)."""

    source: str
    expr: str


def load_dashboard(path: Path = DASHBOARD_FILE) -> dict[str, Any]:
    return json.loads(path.read_text())


def iter_panels(dashboard: dict[str, Any]):
    """Every panel, rows' nested panels included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries(dashboard: dict[str, Any] | None = None) -> list[Query]:
    dashboard = dashboard or load_dashboard()
    queries = []
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            label = target.get("legendFormat") or target.get("refId")
            queries.append(Query(f"panel '{panel['title']}' [{label}]", target["expr"]))
    return queries


def rule_queries(groups: list[dict[str, Any]] | None = None) -> tuple[list[Query], list[Query]]:
    """(recording rules, alerts) as queries."""
    groups = groups if groups is not None else rule_groups()
    records, alerts = [], []
    for group in groups:
        for rule in group["rules"]:
            if "record" in rule:
                records.append(Query(f"record {rule['record']}", rule["expr"].strip()))
            else:
                alerts.append(Query(f"alert {rule['alert']}", rule["expr"].strip()))
    return records, alerts


def grafana_substitute(expr: str, variables: dict[str, str], rate_interval: str, range_: str) -> str:
    """``expr`` with Grafana's variables replaced as Grafana would before sending it to Prometheus."""
    out = expr.replace("$__rate_interval", rate_interval).replace("$__range", range_)
    for name, value in variables.items():
        out = out.replace(f"${{{name}}}", value).replace(f"${name}", value)
    if "$" in out:
        raise ValueError(f"unresolved variable in {out!r}")
    return out


_BINARY_OPERATORS = re.compile(r"==|!=|>=|<=|>|<|\+|-|\*|/|%|\^|\b(?:and|or|unless)\b")
_MODIFIER = re.compile(r"^\s*(?:bool\b|(?:on|ignoring)\s*\([^)]*\)|(?:group_left|group_right)(?:\s*\([^)]*\))?)\s*")
_NUMBER = re.compile(r"^\s*[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:e[-+]?\d+)?\s*$", re.IGNORECASE)


def split_operands(expr: str) -> list[str]:
    """The operands of ``expr``'s top-level binary operators (comparison, arithmetic, and/or/unless), left to right.

    Enough PromQL for the rules here: brackets, braces, parentheses and quoted strings are skipped over; a duration
    like ``[5m]`` or a label matcher ``!~`` never splits. ``a > 0.5 and a > 1.5 * b`` gives ``a, 0.5, a, 1.5, b``.
    """
    operands, depth, start, i, quote = [], 0, 0, 0, ""
    while i < len(expr):
        ch = expr[i]
        if quote:
            quote = "" if ch == quote and expr[i - 1] != "\\" else quote
        elif ch in "\"'`":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif depth == 0:
            match = _BINARY_OPERATORS.match(expr, i)
            # a sign right after another operator (or at the start) is unary, not a split
            if match and expr[start:i].strip():
                operands.append(expr[start:i].strip())
                i = match.end()
                while modifier := _MODIFIER.match(expr[i:]):  # bool, on(..), group_left, ...
                    if not modifier.end():
                        break
                    i += modifier.end()
                start = i
                continue
        i += 1
    operands.append(expr[start:].strip())
    return operands


def signal_queries(alert_expr: str) -> list[str]:
    """What an alert looks at, each of which must return series on a working system even while the alert is silent:
    its non-literal operands, with ``absent(x)`` replaced by ``x``."""
    signals = []
    for operand in split_operands(alert_expr):
        if _NUMBER.match(operand):
            continue
        inner = re.fullmatch(r"absent\((.*)\)", operand, flags=re.DOTALL)
        signals.append(inner.group(1).strip() if inner else operand)
    return signals


def finite_points(series: list[dict[str, Any]]) -> int:
    """How many points of a query result (instant or range) are finite numbers (NaN shows as a gap in Grafana)."""
    count = 0
    for s in series:
        for _, v in s.get("values", [s["value"]] if "value" in s else []):
            count += math.isfinite(float(v))
    return count
