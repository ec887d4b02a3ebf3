"""What the local stack prints: its endpoints, how its processes ended, and what Prometheus saw of a demo stream."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from eqface.processes import same_process
from eqface.stack.monitoring import AGGREGATOR_JOB
from eqface.stack.prometheus import PrometheusClient
from eqface.stack.stack import Endpoints


def endpoint_lines(endpoints: Endpoints) -> list[str]:
    e = endpoints
    return [
        f"  aggregator  gRPC {e.aggregator_grpc}   metrics http://{e.aggregator_metrics}/metrics"
        + (
            f"   mutual TLS (CA and client certificate in {Path(e.aggregator_auth['ca_file']).parent})"
            if e.aggregator_auth
            else ""
        ),
        f"  triton      gRPC {e.triton_grpc}   HTTP http://{e.triton_http}   "
        f"metrics http://{e.triton_metrics}/metrics   (model control: explicit)",
        f"  prometheus  {e.prometheus or '(not running: not installed or --no-prometheus)'}",
    ]


def stopped_line(codes: Mapping[str, int | None], endpoints: Endpoints) -> str:
    """One line: each part's exit status and whether any recorded process still runs."""
    left = [name for name, p in endpoints.processes.items() if same_process(p["pid"], p["start_ticks"])]
    parts = ", ".join(f"{name} (exit {code})" for name, code in codes.items())
    running = f"still running: {', '.join(left)}" if left else "no child process left"
    return f"stopped: {parts or 'nothing was running'}; {running}"


def wait_for_scrape_after(client: PrometheusClient, since: float, scrape_interval_s: float) -> None:
    """Until Prometheus scraped the aggregator after ``since`` (new targets apply after up to 5 s, then a scrape
    every interval), plus one rule evaluation."""
    deadline = time.monotonic() + 30 + 3 * scrape_interval_s
    while time.monotonic() < deadline:
        if client.scalar(f'max(timestamp(up{{job="{AGGREGATOR_JOB}"}}))', default=0.0) > since:
            break
        time.sleep(0.5)
    time.sleep(scrape_interval_s)


def prometheus_lines(client: PrometheusClient) -> list[str]:
    """Frames by result, median quality, Triton's average batch, stage p99 and firing alerts, as Prometheus has them."""

    def by(label: str, rows: list[dict], fmt: Callable[[float], str]) -> str:
        rows = sorted(rows, key=lambda r: r["metric"][label])
        return ", ".join(
            f"{r['metric'][label]} {fmt(float(r['value'][1]))}" for r in rows if math.isfinite(float(r["value"][1]))
        )

    frames = client.query("sum by (result) (eqface_aggregator_frames_total)")
    median = client.scalar("histogram_quantile(0.5, sum by (le) (eqface_aggregator_frame_quality_bucket))")
    batch = client.query("sum by (model) (nv_inference_count) / sum by (model) (nv_inference_exec_count)")
    p99 = client.query("histogram_quantile(0.99, sum by (stage, le) (eqface_aggregator_stage_duration_seconds_bucket))")
    firing = [a["labels"]["alertname"] for a in client.alerts() if a["state"] == "firing"]
    return [
        "  frames by result   " + by("result", frames, lambda v: f"{v:.0f}"),
        f"  median quality     {median:.2f} (from the frame-quality histogram)",
        "  Triton avg batch   " + by("model", batch, lambda v: f"{v:.1f}"),
        "  stage p99          " + by("stage", p99, lambda v: f"{1000 * v:.1f} ms"),
        f"  alerts firing      {', '.join(firing) or 'none'}",
    ]


def report_prometheus(url: str, scrape_interval_s: float, stream_end: float, out=print) -> None:
    client = PrometheusClient(url)
    wait_for_scrape_after(client, stream_end, scrape_interval_s)
    out(f"\nPrometheus ({url}) saw:")
    for line in prometheus_lines(client):
        out(line)
