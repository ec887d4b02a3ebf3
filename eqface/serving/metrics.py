"""Triton's own per-model counters from its Prometheus ``/metrics`` endpoint: requests, inferences, executions.

``inferences / executions`` is the average batch size the server actually ran, the figure that shows dynamic
batching at work (each execution of a python-backend or onnxruntime model is one model call).
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

_COUNTERS = {
    "nv_inference_request_success": "successes",
    "nv_inference_request_failure": "failures",
    "nv_inference_count": "inferences",
    "nv_inference_exec_count": "executions",
}


@dataclass(frozen=True)
class InferenceCounts:
    """Counters of one model (all versions unless one was asked for); subtract two readings to get a window."""

    successes: int = 0
    failures: int = 0
    inferences: int = 0  # batch items inferred
    executions: int = 0  # model executions (batches)

    @property
    def average_batch_size(self) -> float:
        return self.inferences / self.executions if self.executions else 0.0

    def __sub__(self, other: InferenceCounts) -> InferenceCounts:
        return InferenceCounts(
            self.successes - other.successes,
            self.failures - other.failures,
            self.inferences - other.inferences,
            self.executions - other.executions,
        )


def parse_inference_counts(text: str, model: str, version: str | int | None = None) -> InferenceCounts:
    """Sums the counters of ``model`` in a Prometheus text exposition (failures over every reason)."""
    totals = dict.fromkeys(_COUNTERS.values(), 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            field = _COUNTERS.get(sample.name) or _COUNTERS.get(sample.name.removesuffix("_total"))
            if field is None or sample.labels.get("model") != model:
                continue
            if version is not None and sample.labels.get("version") != str(version):
                continue
            totals[field] += sample.value
    return InferenceCounts(**{k: int(v) for k, v in totals.items()})


def scrape_inference_counts(
    metrics_url: str, model: str, version: str | int | None = None, timeout_s: float = 5.0
) -> InferenceCounts:
    """Reads ``metrics_url`` (e.g. ``TritonServer.metrics_url``) and returns the counters of ``model``."""
    with urllib.request.urlopen(metrics_url, timeout=timeout_s) as response:
        return parse_inference_counts(response.read().decode(), model, version)
