"""A small kustomize renderer for exactly the features ``manifests/`` uses, so tests and the local stack can read the
rendered objects on a machine without ``kustomize`` or ``kubectl`` (PyPI has no maintained kustomize for Python).

Supported (anything else raises :class:`UnsupportedKustomization`, so a new feature cannot be silently ignored):

- ``resources`` (YAML files, possibly multi-document, and directories holding a kustomization) and ``components``
  (``kind: Component``), accumulated in kustomize's order: resources, then components (which may add resources and
  patch everything accumulated before them), then this kustomization's generators, patches, namespace and images;
- ``configMapGenerator`` with ``files`` (``key=path`` or a path), ``literals`` and ``options`` (``labels``,
  ``annotations``, ``disableNameSuffixHash: true``; name hashes are not implemented);
- ``patches`` given by ``path`` or inline ``patch``: strategic-merge patches aimed by kind and name, including
  ``$patch: delete`` for a whole object or a list item, and ``null`` to delete a field;
- ``namespace`` (namespaced kinds only) and ``images`` (``newName``, ``newTag``, ``digest`` on pod templates).

Strategic merge follows kustomize 5: maps merge, ``null`` deletes, lists with a merge key (containers, env, volumes,
volume mounts, ports, ...) merge item by item with the patch's items first (patch order), then the original items the
patch did not name; every other list is replaced. ``tests/test_manifests.py`` checks the result against
``kubectl kustomize`` wherever kubectl is installed.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
_KNOWN_FIELDS = {
    "apiVersion",
    "kind",
    "resources",
    "components",
    "configMapGenerator",
    "patches",
    "namespace",
    "images",
}
_CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
    "APIService",
    "IngressClass",
    "RuntimeClass",
    "CSIDriver",
    "VolumeAttachment",
    "ClusterIssuer",
}
# Lists merged item by item, by field name; "ports" depends on where it is (see _merge_key).
_MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "imagePullSecrets": "name",
    "volumeDevices": "devicePath",
}
_POD_SPEC_PATHS = {
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
    "Pod": ("spec",),
}


class UnsupportedKustomization(ValueError):
    """The kustomization uses a feature this renderer does not implement."""


def render(directory: str | Path) -> list[Obj]:
    """The objects ``kustomize build DIRECTORY`` would print (order aside: kustomize sorts by kind, this keeps the
    order of accumulation)."""
    return _build(Path(directory), expect_kind="Kustomization", accumulated=[])


def find(objects: Iterable[Obj], kind: str, name: str) -> Obj:
    """The object of ``kind`` named ``name``; KeyError naming what exists otherwise."""
    objects = list(objects)
    for obj in objects:
        if obj.get("kind") == kind and obj.get("metadata", {}).get("name") == name:
            return obj
    names = ", ".join(f"{o.get('kind')}/{o.get('metadata', {}).get('name')}" for o in objects)
    raise KeyError(f"no {kind}/{name} among: {names}")


def _read_kustomization(directory: Path) -> Obj:
    for name in KUSTOMIZATION_FILES:
        path = directory / name
        if path.is_file():
            data = yaml.safe_load(path.read_text()) or {}
            unknown = set(data) - _KNOWN_FIELDS
            if unknown:
                raise UnsupportedKustomization(f"{path}: fields {sorted(unknown)} are not supported by this renderer")
            return data
    raise FileNotFoundError(f"no kustomization file in {directory}")


def _build(directory: Path, expect_kind: str, accumulated: list[Obj]) -> list[Obj]:
    """Renders ``directory``; a Component transforms ``accumulated`` (its parent's objects), a Kustomization starts
    from nothing."""
    k = _read_kustomization(directory)
    kind = k.get("kind", "Kustomization")
    if kind != expect_kind:
        raise UnsupportedKustomization(f"{directory}: expected kind {expect_kind}, found {kind}")
    objects = accumulated
    for entry in k.get("resources", []):
        path = directory / entry
        objects += _build(path, "Kustomization", []) if path.is_dir() else _load_yaml(path)
    for entry in k.get("components", []):
        objects = _build(directory / entry, "Component", objects)
    objects += [_generate_config_map(directory, spec) for spec in k.get("configMapGenerator", [])]
    for patch in k.get("patches", []):
        objects = _apply_patch_entry(directory, patch, objects)
    if "namespace" in k:
        for obj in objects:
            if obj.get("kind") not in _CLUSTER_SCOPED:
                obj.setdefault("metadata", {})["namespace"] = k["namespace"]
    for image in k.get("images", []):
        _set_image(objects, image)
    return objects


def _load_yaml(path: Path) -> list[Obj]:
    if not path.is_file():
        raise FileNotFoundError(f"resource not found: {path}")
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _generate_config_map(directory: Path, spec: Obj) -> Obj:
    options = spec.get("options", {})
    unknown = set(spec) - {"name", "files", "literals", "options"}
    if unknown or set(options) - {"labels", "annotations", "disableNameSuffixHash"}:
        raise UnsupportedKustomization(f"configMapGenerator {spec.get('name')}: unsupported keys")
    if not options.get("disableNameSuffixHash"):
        raise UnsupportedKustomization(
            f"configMapGenerator {spec['name']}: name hashes are not implemented; set options.disableNameSuffixHash"
        )
    data: dict[str, str] = {}
    for entry in spec.get("files", []):
        key, _, rel = entry.rpartition("=") if "=" in entry else ("", "", entry)
        path = directory / rel
        data[key or path.name] = path.read_text()
    for literal in spec.get("literals", []):
        key, value = literal.split("=", 1)
        data[key] = value
    metadata: Obj = {"name": spec["name"]}
    if options.get("labels"):
        metadata["labels"] = dict(options["labels"])
    if options.get("annotations"):
        metadata["annotations"] = dict(options["annotations"])
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}


def _apply_patch_entry(directory: Path, entry: Obj, objects: list[Obj]) -> list[Obj]:
    if set(entry) - {"path", "patch"}:
        raise UnsupportedKustomization(f"patch {entry}: only 'path' or inline 'patch' (no target, no options)")
    text = (directory / entry["path"]).read_text() if "path" in entry else entry["patch"]
    for patch in (doc for doc in yaml.safe_load_all(text) if doc):
        if "op" in patch or isinstance(patch, list):
            raise UnsupportedKustomization("JSON 6902 patches are not supported")
        kind, name = patch["kind"], patch["metadata"]["name"]
        target = find(objects, kind, name)  # KeyError: a patch that aims at nothing is a mistake
        if patch.get("$patch") == "delete":
            objects = [o for o in objects if o is not target]
            continue
        merged = strategic_merge(target, {k: v for k, v in patch.items() if k not in ("apiVersion", "kind")})
        objects = [merged if o is target else o for o in objects]
    return objects


def strategic_merge(original: Obj, patch: Obj, path: tuple[str, ...] = ()) -> Obj:
    """``original`` with the strategic-merge ``patch`` applied (neither argument is modified)."""
    result = copy.deepcopy(original)
    for key, value in patch.items():
        if key.startswith("$"):
            raise UnsupportedKustomization(f"directive {key} at {'.'.join(path)} is not supported")
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = strategic_merge(result[key], value, (*path, key))
        elif isinstance(value, list) and isinstance(result.get(key), list):
            result[key] = _merge_list(result[key], value, (*path, key))
        else:
            result[key] = _strip_directives(copy.deepcopy(value))
    return result


def _merge_key(path: tuple[str, ...]) -> str | None:
    field = path[-1]
    if field == "ports":
        return "containerPort" if len(path) >= 2 and path[-2] in ("containers", "initContainers") else "port"
    return _MERGE_KEYS.get(field)


def _merge_list(original: list[Any], patch: list[Any], path: tuple[str, ...]) -> list[Any]:
    key = _merge_key(path)
    if key is None or not all(isinstance(i, dict) for i in original + patch):
        return [_strip_directives(copy.deepcopy(i)) for i in patch if not _is_delete(i)]
    by_key = {item.get(key): item for item in original}
    named = set()
    merged = []
    for item in patch:
        named.add(item.get(key))
        if _is_delete(item):
            continue
        existing = by_key.get(item.get(key))
        if existing is None:
            merged.append(_strip_directives(copy.deepcopy(item)))
        else:
            merged.append(strategic_merge(existing, item, path))
    return merged + [copy.deepcopy(item) for item in original if item.get(key) not in named]


def _is_delete(item: Any) -> bool:
    return isinstance(item, dict) and item.get("$patch") == "delete"


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value if not _is_delete(v)]
    return value


def _set_image(objects: list[Obj], image: Obj) -> None:
    if set(image) - {"name", "newName", "newTag", "digest"}:
        raise UnsupportedKustomization(f"images entry {image}: unsupported keys")
    for obj in objects:
        spec = obj
        for part in _POD_SPEC_PATHS.get(obj.get("kind"), ("-",)):
            spec = spec.get(part, {}) if isinstance(spec, dict) else {}
        for field in ("initContainers", "containers"):
            for container in spec.get(field, []) if isinstance(spec, dict) else []:
                current = container.get("image", "")
                repo, tag = _split_image(current)
                if repo != image["name"]:
                    continue
                repo = image.get("newName", repo)
                if "digest" in image:
                    container["image"] = f"{repo}@{image['digest']}"
                elif "newTag" in image:
                    container["image"] = f"{repo}:{image['newTag']}"
                else:
                    container["image"] = f"{repo}{tag}"


def _split_image(image: str) -> tuple[str, str]:
    """("repo", ":tag" or "@digest" or "")."""
    if "@" in image:
        repo, digest = image.split("@", 1)
        return repo, f"@{digest}"
    head, sep, tail = image.rpartition(":")
    if sep and "/" not in tail:
        return head, f":{tail}"
    return image, ""
