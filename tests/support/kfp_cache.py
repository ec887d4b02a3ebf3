"""KFP's cache fingerprint of a task, computed from the compiled pipeline the way the KFP v2 backend computes it.

Reproduced from kubeflow/pipelines (backend/src/v2):
- ``driver/cache.go`` ``getFingerPrint``: the key is built from the executor input's inputs and outputs, the output
  parameters' types, ``container.command + container.args`` as written in the IR (placeholders unresolved), the image
  and the sorted, de-duplicated names of the PVCs the task mounts.
- ``cacheutils/cache.go`` ``GenerateCacheKey``: input artifacts count by their MLMD names (the artifact ids, see
  ``metadata/converter.go`` ``toRuntimeArtifact``), input parameters by value, output artifacts by name, type and
  metadata with the URI wiped, output parameters by type; ``GenerateFingerPrint``: sha256 of the key marshalled with
  protojson, then decoded and re-encoded with Go's ``encoding/json`` (sorted keys, compact, HTML-escaped).
- ``driver/resolve.go``: a parameter whose runtime constant is one of :data:`RUN_PLACEHOLDERS` is replaced by the
  run's (or task's) own value; an optional component input the task does not set is not among the inputs.
- ``driver/driver.go`` ``provisionOutputs``: an output artifact's runtime name is its output key.

:func:`simulate_run` replays a run against a cache the way the driver does: a task whose fingerprint has an entry
reuses that execution's outputs (the same artifact ids), any other task executes and gets new artifact ids.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

# resolve.go: the runtime constants the driver replaces by a value of the run or the task.
RUN_PLACEHOLDERS = (
    "{{$.pipeline_job_name}}",
    "{{$.pipeline_job_resource_name}}",
    "{{$.pipeline_job_uuid}}",
    "{{$.pipeline_task_name}}",
    "{{$.pipeline_task_uuid}}",
    "{{$.pipeline_job_create_time_utc}}",
    "{{$.pipeline_job_schedule_time_utc}}",
)

_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}
_HTML_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def go_json(value: Any) -> str:
    """Go's ``json.Marshal`` of ``value`` decoded into ``interface{}`` (objects, arrays, strings, float64, bools)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _go_float(float(value))
    if isinstance(value, str):
        return _go_string(value)
    if isinstance(value, Mapping):
        items = sorted(value.items())
        return "{" + ",".join(f"{_go_string(k)}:{go_json(v)}" for k, v in items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(go_json(v) for v in value) + "]"
    raise TypeError(f"no JSON form for {type(value).__name__}")


def _go_string(text: str) -> str:
    out = []
    for ch in text:
        if ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch])
        elif ch in _HTML_ESCAPES:
            out.append(_HTML_ESCAPES[ch])
        elif ord(ch) < 0x20:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _go_float(x: float) -> str:
    """encoding/json's float64: shortest round-trip digits, 'f' form in [1e-6, 1e21), else 'e' with e-7 not e-07."""
    if not math.isfinite(x):
        raise ValueError(f"JSON has no form for {x}")
    if x == 0:
        return "-0" if math.copysign(1.0, x) < 0 else "0"
    if 1e-6 <= abs(x) < 1e21:
        text = format(Decimal(repr(x)), "f")
        return text.rstrip("0").rstrip(".") if "." in text else text
    mantissa, exponent = repr(x).split("e")
    sign, digits = exponent[0], exponent[1:].lstrip("0")
    return f"{mantissa}e{sign}{digits.zfill(2) if sign == '+' else digits}"


def fingerprint(cache_key: Mapping[str, Any]) -> str:
    """``GenerateFingerPrint``: sha256 hex of the Go-formatted JSON of the key (protojson field names)."""
    return hashlib.sha256(go_json(cache_key).encode()).hexdigest()


def cache_key(
    *,
    input_artifact_names: Mapping[str, list[str]],
    input_parameter_values: Mapping[str, Any],
    output_artifacts: Mapping[str, Mapping[str, Any]],
    output_parameter_types: Mapping[str, str],
    cmd_args: list[str],
    image: str,
    pvc_names: list[str],
) -> dict[str, Any]:
    """``GenerateCacheKey`` in protojson form (empty maps, lists and strings are left out, as protojson does)."""
    key: dict[str, Any] = {
        "inputArtifactNames": {k: {"artifactNames": list(v)} for k, v in input_artifact_names.items()},
        "inputParameterValues": dict(input_parameter_values),
        "outputArtifactsSpec": {k: {f: v for f, v in a.items() if f != "uri"} for k, a in output_artifacts.items()},
        "outputParametersSpec": dict(output_parameter_types),
        "containerSpec": {k: v for k, v in (("image", image), ("cmdArgs", cmd_args), ("pvcNames", pvc_names)) if v},
    }
    return {k: v for k, v in key.items() if v}


# ----------------------------------------------------------------------------------------- the compiled pipeline
def root_tasks(spec: Mapping[str, Any]) -> dict[str, Any]:
    return spec["root"]["dag"]["tasks"]


def all_tasks(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Every task of the pipeline, nested DAGs (conditions) included, by name."""
    found: dict[str, Any] = {}
    for component in [spec["root"], *spec["components"].values()]:
        found.update(component.get("dag", {}).get("tasks", {}))
    return found


def is_cached(task: Mapping[str, Any]) -> bool:
    return bool(task.get("cachingOptions", {}).get("enableCache", False))


def run_unique_inputs(spec: Mapping[str, Any]) -> dict[str, list[str]]:
    """Per cached task, the inputs (and command arguments) that carry a value of the run or the task."""
    found: dict[str, list[str]] = {}
    executors = spec["deploymentSpec"]["executors"]
    for name, task in all_tasks(spec).items():
        if not is_cached(task):
            continue
        hits = [
            f"{param}={source['runtimeValue']['constant']}"
            for param, source in task.get("inputs", {}).get("parameters", {}).items()
            if any(p in str(source.get("runtimeValue", {}).get("constant", "")) for p in RUN_PLACEHOLDERS)
        ]
        component = spec["components"][task["componentRef"]["name"]]
        container = executors.get(component.get("executorLabel", ""), {}).get("container", {})
        hits += [arg for arg in container.get("command", []) + container.get("args", []) if _has_run_value(arg)]
        if hits:
            found[name] = hits
    return found


def _has_run_value(text: str) -> bool:
    return any(p in text for p in RUN_PLACEHOLDERS)


def _order(tasks: Mapping[str, Any]) -> list[str]:
    done: list[str] = []
    while len(done) < len(tasks):
        ready = [n for n, t in tasks.items() if n not in done and set(t.get("dependentTasks", [])) <= set(done)]
        if not ready:
            raise ValueError("the DAG has a cycle")
        done += sorted(ready)
    return done


@dataclass
class Execution:
    fingerprint: str
    parameters: dict[str, Any]  # output parameter values
    artifacts: dict[str, str]  # output artifact key → MLMD artifact name (id)


@dataclass
class ServerCache:
    """The KFP server's cache table (fingerprint → execution) and MLMD's artifact id counter."""

    entries: dict[str, Execution] = field(default_factory=dict)
    ids: itertools.count = field(default_factory=lambda: itertools.count(1))


@dataclass(frozen=True)
class TaskOutcome:
    fingerprint: str | None  # None: caching is off for the task
    cached: bool
    inputs: dict[str, Any]


def simulate_run(
    spec: Mapping[str, Any],
    platform: Mapping[str, Any],
    arguments: Mapping[str, Any],
    run_id: str,
    cache: ServerCache,
    bodies: Mapping[str, Callable[..., Mapping[str, Any]]] | None = None,
) -> dict[str, TaskOutcome]:
    """One run of the root DAG's container tasks against ``cache``; returns, per task, its key and whether it hit.

    An executed task's output parameters are what ``bodies[task]`` returns for its input parameters (the real
    component body, for a task whose outputs feed other tasks' parameters), else a function of its fingerprint (a
    step that computes only from its inputs). A task with caching off, or one that misses, gets new artifact ids, as
    MLMD gives them.
    """
    bodies = bodies or {}
    root_params = {
        name: definition.get("defaultValue")
        for name, definition in spec["root"].get("inputDefinitions", {}).get("parameters", {}).items()
    }
    root_params.update(arguments)
    tasks = {
        n: t for n, t in root_tasks(spec).items() if "executorLabel" in spec["components"][t["componentRef"]["name"]]
    }
    done: dict[str, Execution] = {}
    outcomes: dict[str, TaskOutcome] = {}
    for name in _order(tasks):
        task = tasks[name]
        component = spec["components"][task["componentRef"]["name"]]
        parameters = _resolve_parameters(task, component, root_params, done, run_id, name)
        artifacts = {
            key: [
                done[source["taskOutputArtifact"]["producerTask"]].artifacts[
                    source["taskOutputArtifact"]["outputArtifactKey"]
                ]
            ]
            for key, source in task.get("inputs", {}).get("artifacts", {}).items()
        }
        key = _task_key(spec, platform, component, parameters, artifacts)
        print_ = fingerprint(key)
        hit = cache.entries.get(print_) if is_cached(task) else None
        if hit is None:
            outputs = component.get("outputDefinitions", {})
            values = (
                dict(bodies[name](**parameters))
                if name in bodies
                else {p: f"<{p} of {print_[:12]}>" for p in outputs.get("parameters", {})}
            )
            hit = Execution(
                print_,
                values,
                {a: str(next(cache.ids)) for a in outputs.get("artifacts", {})},
            )
            if is_cached(task):
                cache.entries[print_] = hit
            outcomes[name] = TaskOutcome(print_ if is_cached(task) else None, False, key)
        else:
            outcomes[name] = TaskOutcome(print_, True, key)
        done[name] = hit
    return outcomes


def _resolve_parameters(task, component, root_params, done, run_id: str, task_name: str) -> dict[str, Any]:
    run_values = {
        "{{$.pipeline_job_name}}": f"run {run_id}",
        "{{$.pipeline_job_resource_name}}": f"eqface-{run_id}",
        "{{$.pipeline_job_uuid}}": run_id,
        "{{$.pipeline_task_name}}": task_name,
        "{{$.pipeline_task_uuid}}": f"{run_id}/{task_name}",
        "{{$.pipeline_job_create_time_utc}}": f"created {run_id}",
        "{{$.pipeline_job_schedule_time_utc}}": f"scheduled {run_id}",
    }
    values: dict[str, Any] = {}
    for param, source in task.get("inputs", {}).get("parameters", {}).items():
        if "componentInputParameter" in source:
            values[param] = root_params[source["componentInputParameter"]]
        elif "taskOutputParameter" in source:
            out = source["taskOutputParameter"]
            values[param] = done[out["producerTask"]].parameters[out["outputParameterKey"]]
        elif "runtimeValue" in source:
            constant = source["runtimeValue"]["constant"]
            values[param] = run_values.get(constant, constant) if isinstance(constant, str) else constant
        else:
            raise ValueError(f"{task_name}: input {param} has a source this simulation does not model: {source}")
    for param, definition in component.get("inputDefinitions", {}).get("parameters", {}).items():
        if param not in values and not definition.get("isOptional", False):
            values[param] = definition["defaultValue"]
    return values


def _task_key(spec, platform, component, parameters, artifacts) -> dict[str, Any]:
    label = component["executorLabel"]
    container = spec["deploymentSpec"]["executors"][label]["container"]
    k8s = platform.get("deploymentSpec", {}).get("executors", {}).get(label, {})
    outputs = component.get("outputDefinitions", {})
    return cache_key(
        input_artifact_names=artifacts,
        input_parameter_values=parameters,
        output_artifacts={
            name: {"name": name, "type": definition["artifactType"], **_metadata(definition)}
            for name, definition in outputs.get("artifacts", {}).items()
        },
        output_parameter_types={name: d["parameterType"] for name, d in outputs.get("parameters", {}).items()},
        cmd_args=list(container.get("command", [])) + list(container.get("args", [])),
        image=container["image"],
        pvc_names=sorted({m["constant"] for m in k8s.get("pvcMount", [])}),
    )


def _metadata(definition: Mapping[str, Any]) -> dict[str, Any]:
    return {"metadata": definition["metadata"]} if "metadata" in definition else {}
