"""The Grafana dashboard of the serving stack, built with grafana-foundation-sdk: the one source of
``manifests/base/monitoring/dashboards/eqface-overview.json`` (``python -m eqface.stack.dashboard`` writes it,
``--check`` fails when the committed file differs). Every query is filtered by the namespace, job and instance
variables."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, common, heatmap, stat, timeseries
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as kinds
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.heatmap import HeatmapColorMode
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from eqface.stack.manifests import MANIFESTS_DIR
from eqface.stack.monitoring import AGGREGATOR_JOB, TRITON_JOB

DASHBOARD_FILE = MANIFESTS_DIR / "base" / "monitoring" / "dashboards" / "eqface-overview.json"
UID = "eqface-overview"
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
# The label matchers every selector carries, so each panel follows the dashboard's variables.
SELECTOR = 'namespace=~"$namespace", job=~"$job", instance=~"$instance"'
GATED = 'result!~"duplicate|error"'  # frames that reached the QWFA gates
STAGE_HELP = (
    "Aggregator stages: decode (image checks), triton (inference call), update (QWFA), store (reads and group "
    "commits). SLO: p99 of triton and store within 250 ms (EQFaceLatencySLOBreach)."
)


def sel(metric: str, *matchers: str) -> str:
    """``metric{<the variables' matchers>, matchers...}``."""
    return f"{metric}{{{', '.join((SELECTOR, *matchers))}}}"


def rate(metric: str, *matchers: str, window: str = "$__rate_interval") -> str:
    return f"rate({sel(metric, *matchers)}[{window}])"


def quantile(q: float, metric: str, by: str = "le") -> str:
    return f"histogram_quantile({q}, sum by ({by}) ({rate(metric)}))"


def per_request(numerator: str) -> str:
    """Triton's cumulative microseconds per successful request, in milliseconds."""
    return f"sum by (model) ({rate(numerator)}) / sum by (model) ({rate('nv_inference_request_success')}) / 1000"


def query(expr: str, legend: str, ref_id: str = "A") -> prom.Dataquery:
    return prom.Dataquery().expr(expr).legend_format(legend).ref_id(ref_id).range().datasource(DATASOURCE)


def _variables() -> list[db.QueryVariable | db.DatasourceVariable]:
    def label_values(name: str, label: str, selector: str, text: str) -> db.QueryVariable:
        definition = f"label_values({selector}, {label})"
        return (
            db.QueryVariable(name)
            .label(text)
            .datasource(DATASOURCE)
            .query({"query": definition, "refId": name})
            .include_all(True)
            .multi(True)
            .all_value(".*")
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(model.VariableSort.ALPHABETICAL_ASC)
        )

    jobs = f"{TRITON_JOB}|{AGGREGATOR_JOB}"
    return [
        db.DatasourceVariable("datasource").label("Prometheus").type("prometheus"),
        label_values("namespace", "namespace", "eqface_aggregator_frames_total", "Namespace"),
        label_values("job", "job", f'up{{namespace=~"$namespace", job=~"{jobs}"}}', "Job"),
        label_values("instance", "instance", 'up{namespace=~"$namespace", job=~"$job"}', "Instance"),
    ]


def _stat(title: str, description: str, expr: str, legend: str, unit: str = "short") -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .height(4)
        .span(4)
        .with_target(query(expr, legend))
    )


def _series(title: str, description: str, unit: str, *targets: tuple[str, str], w: int = 8, h: int = 8):
    panel = timeseries.Panel().title(title).description(description).datasource(DATASOURCE).unit(unit)
    panel = panel.span(w).height(h)
    for ref_id, (legend, expr) in zip("ABCDEFGH", targets, strict=False):
        panel = panel.with_target(query(expr, legend, ref_id))
    return panel


def _frames_row(dash: db.Dashboard) -> db.Dashboard:
    frames = "eqface_aggregator_frames_total"
    accepted, rejected, error = 'result="accepted"', 'result=~"rejected_quality|rejected_similarity"', 'result="error"'
    acceptance = f"sum({rate(frames, accepted)}) / sum({rate(frames, GATED)})"
    rejected = f"sum({rate(frames, rejected)}) / sum({rate(frames, GATED)})"
    invalid = f"sum({rate(frames, error)}) / sum({rate(frames)})"
    dash = dash.with_row(db.Row("Frames"))
    for title, description, expr, legend in (
        (
            "active subjects",
            "Subjects that received a frame within the aggregator's --active-window.",
            f"sum({sel('eqface_aggregator_active_subjects')})",
            "active",
        ),
        (
            "gallery size",
            "Identities enrolled in the gallery (every replica holds the same gallery).",
            f"max({sel('eqface_aggregator_gallery_identities')})",
            "identities",
        ),
        (
            "stored subjects",
            "Subjects with a template in the store.",
            f"max({sel('eqface_aggregator_stored_subjects')})",
            "stored",
        ),
        ("open streams", "StreamFrames calls in progress.", f"sum({sel('eqface_aggregator_open_streams')})", "streams"),
    ):
        dash = dash.with_panel(_stat(title, description, expr, legend))
    dash = dash.with_panel(
        _stat(
            "acceptance",
            "Share of frames merged into their subject's template (passed both QWFA gates).",
            acceptance,
            "accepted",
            unit="percentunit",
        )
        .min(0)
        .max(1)
    )
    dash = dash.with_panel(
        _stat("targets up", "Scraped targets that answered, per job.", f"sum by (job) ({sel('up')})", "{{job}}")
    )
    dash = dash.with_panel(
        _series(
            "Accepted / rejected frames",
            "Frames per second by result: accepted (seeded, merged, reseeded), rejected by the quality gate "
            "(s <= s_th) or the similarity gate (cosine <= f_th), duplicates, errors (invalid frames).",
            "fps",
            ("{{result}}", f"sum by (result) ({rate(frames)})"),
            w=12,
        )
        .stacking(common.StackingConfig().mode(kinds.StackingMode.NORMAL))
        .fill_opacity(30)
    )
    return dash.with_panel(
        _series(
            "Rejection and error ratios",
            "Rejected share of gated frames (alert EQFaceRejectionRateSpike) and invalid share of all frames "
            "(alert EQFaceFrameErrorRate).",
            "percentunit",
            ("rejected", rejected),
            ("invalid", invalid),
            w=12,
        ).min(0)
    )


def _quality_row(dash: db.Dashboard) -> db.Dashboard:
    bucket = "eqface_aggregator_frame_quality_bucket"
    dash = dash.with_row(db.Row("Frame quality"))
    dash = dash.with_panel(
        heatmap.Panel()
        .title("Frame quality over time (heatmap)")
        .description("Frames per quality bucket (0.05 wide) per interval: the distribution of s over time.")
        .datasource(DATASOURCE)
        .span(12)
        .height(9)
        .with_target(
            query(f"sum by (le) (increase({sel(bucket)}[$__rate_interval]))", "{{le}}").format(PromQueryFormat.HEATMAP)
        )
        .calculate(False)
        .y_axis(heatmap.YAxisConfig().unit("short").decimals(2))
        .cell_gap(1)
        .color(heatmap.HeatmapColorOptions().mode(HeatmapColorMode.SCHEME).scheme("Spectral").steps(64))
        .show_y_histogram()
        .rows_frame(heatmap.RowsHeatmapOptions().layout(kinds.HeatmapCellLayout.LE))
    )
    dash = dash.with_panel(
        bargauge.Panel()
        .title("Frame quality distribution (selected range)")
        .description("Histogram of frame quality over the dashboard's time range (frames per 0.05-wide bucket).")
        .datasource(DATASOURCE)
        .unit("short")
        .span(12)
        .height(9)
        .with_target(
            prom.Dataquery()
            .expr(f"sum by (le) (increase({sel(bucket)}[$__range]))")
            .legend_format("{{le}}")
            .ref_id("A")
            .instant()
            .format(PromQueryFormat.HEATMAP)
            .datasource(DATASOURCE)
        )
        .orientation(kinds.VizOrientation.VERTICAL)
        .display_mode(kinds.BarGaugeDisplayMode.BASIC)
        .show_unfilled(False)
        .reduce_options(common.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    quality = "eqface_aggregator_frame_quality_bucket"
    dash = dash.with_panel(
        _series(
            "Frame quality percentiles",
            "Median quality falling 20% below its 1-day median for 30 minutes fires EQFaceQualityDrift.",
            "none",
            ("p10", quantile(0.1, quality)),
            ("p50", quantile(0.5, quality)),
            ("p90", quantile(0.9, quality)),
            (
                "p50 over 1 day (drift baseline)",
                f"histogram_quantile(0.5, sum by (le) ({rate(quality, window='1d')}))",
            ),
            w=12,
        )
        .min(0)
        .max(1)
    )
    similarity = "eqface_aggregator_frame_similarity_bucket"
    return dash.with_panel(
        _series(
            "Similarity to template (percentiles)",
            "Cosine similarity of each frame to its subject's template before the frame (gate f_th).",
            "none",
            ("p10", quantile(0.1, similarity)),
            ("p50", quantile(0.5, similarity)),
            ("p90", quantile(0.9, similarity)),
            w=12,
        )
        .min(-1)
        .max(1)
    )


def _latency_row(dash: db.Dashboard) -> db.Dashboard:
    dash = dash.with_row(db.Row("Latency"))
    for q, name in ((0.5, "p50"), (0.95, "p95"), (0.99, "p99")):
        expr = quantile(q, "eqface_aggregator_stage_duration_seconds_bucket", by="stage, le")
        dash = dash.with_panel(_series(f"Stage latency {name}", STAGE_HELP, "s", ("{{stage}}", expr)))
    return dash


def _triton_row(dash: db.Dashboard) -> db.Dashboard:
    count = f"sum by (model) ({rate('nv_inference_count')})"
    batch = "eqface_aggregator_triton_batch_images"
    dash = dash.with_row(db.Row("Triton"))
    panels = [
        _series(
            "Triton inference rate",
            "Images inferred per second per model (eqface: the bytes-in ensemble; preprocess and eqface_onnx: "
            "its steps).",
            "ops",
            ("{{model}}", count),
        ),
        _series(
            "Average batch size",
            "Images per model execution (nv_inference_count / nv_inference_exec_count): dynamic batching at work.",
            "short",
            ("{{model}}", f"{count} / sum by (model) ({rate('nv_inference_exec_count')})"),
        ).min(0),
        _series(
            "Queue time per request",
            "Mean time a request waits in Triton's scheduler queue (includes the dynamic batcher's delay).",
            "ms",
            ("{{model}}", per_request("nv_inference_queue_duration_us")),
        ),
        _series(
            "Triton request latency",
            "Mean end-to-end request time inside Triton, and its compute part.",
            "ms",
            ("{{model}}", per_request("nv_inference_request_duration_us")),
            ("{{model}} compute", per_request("nv_inference_compute_infer_duration_us")),
        ),
        _series(
            "Aggregator micro-batch to Triton",
            "Images the aggregator sends per Triton request (its own micro-batching, --triton-max-batch).",
            "short",
            ("images per request", f"sum({rate(batch + '_sum')}) / sum({rate(batch + '_count')})"),
        ).min(0),
        _series(
            "Triton failures",
            "Failed inference requests per second (EQFaceTritonInferenceErrors above 1%).",
            "reqps",
            ("{{model}} {{reason}}", f"sum by (model, reason) ({rate('nv_inference_request_failure')})"),
        ),
    ]
    for panel in panels:
        dash = dash.with_panel(panel)
    return dash


def _service_row(dash: db.Dashboard) -> db.Dashboard:
    group = "eqface_aggregator_commit_group_frames_bucket"
    dash = dash.with_row(db.Row("Service"))
    for panel in (
        _series(
            "Dependencies",
            "1 while the aggregator's store / Triton answer its checks (EQFaceDependencyDown).",
            "short",
            ("{{dependency}}", f"min by (dependency) ({sel('eqface_aggregator_dependency_up')})"),
            h=7,
        )
        .min(0)
        .max(1),
        _series(
            "Active subjects and gallery",
            "Subjects active within the window, identities enrolled, subjects held decoded in the LRU cache.",
            "short",
            ("active subjects", f"sum({sel('eqface_aggregator_active_subjects')})"),
            ("gallery identities", f"max({sel('eqface_aggregator_gallery_identities')})"),
            ("cached subjects", f"sum({sel('eqface_aggregator_cached_subjects')})"),
            h=7,
        ),
        _series(
            "Group commit size",
            "Frames per store transaction (group commit).",
            "short",
            ("p50", quantile(0.5, group)),
            ("p99", quantile(0.99, group)),
            h=7,
        ),
    ):
        dash = dash.with_panel(panel)
    return dash


def build() -> model.Dashboard:
    dash = (
        db.Dashboard("EQFace: quality-aware face aggregation")
        .uid(UID)
        .tags(["eqface"])
        .description(
            "Frame quality, QWFA acceptance, per-stage latency and Triton batching of the EQFace serving stack."
        )
        .editable()
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .variables(_variables())
    )
    for row in (_frames_row, _quality_row, _latency_row, _triton_row, _service_row):
        dash = row(dash)
    built = dash.build()
    for number, panel in enumerate(built.panels, start=1):  # stable ids: Grafana links and the tests refer to them
        panel.id_val = number
    return built


def render() -> str:
    """The dashboard as the committed JSON file holds it."""
    return JSONEncoder(sort_keys=True, indent=2).encode(build()) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eqface.stack.dashboard", description=__doc__)
    parser.add_argument("--out", type=Path, default=DASHBOARD_FILE, help="file to write (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="fail when --out differs from the generated dashboard")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not args.out.is_file() or args.out.read_text() != text:
            print(f"{args.out} is not what eqface/stack/dashboard.py generates: run python -m eqface.stack.dashboard")
            return 1
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
