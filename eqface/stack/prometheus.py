"""A local Prometheus for the stack: its configuration (same job names and rules as the cluster) and a small client
for its HTTP API."""

from __future__ import annotations

import json
import math
import shutil
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from eqface.stack.monitoring import AGGREGATOR_JOB, TRITON_JOB

LOCAL_NAMESPACE = "eqface-local"  # the namespace label the cluster's scrapes carry; the dashboard filters on it


class PrometheusQueryError(RuntimeError):
    """Prometheus answered a query with an error (bad PromQL, timeout)."""


def find_prometheus() -> str | None:
    return shutil.which("prometheus")


def render_config(
    triton_metrics: str, aggregator_metrics: str, rules_file: Path | None, scrape_interval_s: float
) -> dict[str, Any]:
    """prometheus.yml scraping Triton and the aggregator (``host:port`` each) under the cluster's job names."""
    interval = f"{max(1, round(scrape_interval_s))}s"
    labels = {"namespace": LOCAL_NAMESPACE}
    config: dict[str, Any] = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval, "scrape_timeout": interval},
        "scrape_configs": [
            {"job_name": TRITON_JOB, "static_configs": [{"targets": [triton_metrics], "labels": labels}]},
            {"job_name": AGGREGATOR_JOB, "static_configs": [{"targets": [aggregator_metrics], "labels": labels}]},
        ],
    }
    if rules_file is not None:
        config["rule_files"] = [str(rules_file)]
    return config


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def command(binary: str, config: Path, data_dir: Path, host: str, port: int) -> list[str]:
    return [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={data_dir}",
        f"--web.listen-address={host}:{port}",
        "--storage.tsdb.retention.time=2d",
        "--log.level=warn",
    ]


@dataclass(frozen=True)
class PrometheusClient:
    """Queries ``url`` (``http://host:port``) through the HTTP API."""

    url: str
    timeout_s: float = 10.0

    def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=self.timeout_s) as response:
                body = json.loads(response.read())
        except urllib.error.HTTPError as exc:  # 400/422: bad query; the body says why
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusQueryError(f"{params or path}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, time: float | None = None) -> list[dict[str, Any]]:
        """Instant vector result: ``[{"metric": {...}, "value": [t, "v"]}, ...]``."""
        params: dict[str, Any] = {"query": expr}
        if time is not None:
            params["time"] = time
        data = self._get("/api/v1/query", params)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def query_range(self, expr: str, start: float, end: float, step_s: float) -> list[dict[str, Any]]:
        data = self._get("/api/v1/query_range", {"query": expr, "start": start, "end": end, "step": step_s})
        return data["result"]

    def scalar(self, expr: str, default: float = math.nan) -> float:
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else default

    def targets(self) -> list[dict[str, Any]]:
        return self._get("/api/v1/targets")["activeTargets"]

    def alerts(self) -> list[dict[str, Any]]:
        return self._get("/api/v1/alerts")["alerts"]

    def rules(self) -> list[dict[str, Any]]:
        return self._get("/api/v1/rules")["groups"]

    def label_values(self, label: str, match: str) -> list[str]:
        return self._get(f"/api/v1/label/{label}/values", {"match[]": match})
