"""Environment diff and the parity check between stacks.

Two environments may differ only where their stack files say so. `diff` compares the
rendered objects of two stacks object by object and field by field; `explain` attributes
each difference to a configuration key whose values differ between the stacks and appear in
the differing fields (equal for numbers, booleans and lists; contained for strings, since
names and hostnames embed configured values). A difference no key explains — an object in
one environment only, or a hard-coded value — breaks parity. Objects that exist for a model
listed in one stack only are explained by `models`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelrail.infra.config import StackConfig
from modelrail.infra.manifests import Obj, render

NAMESPACE_TOKEN = "{namespace}"
WHOLE_CONFIG = "(the whole stack configuration)"


@dataclass(frozen=True)
class Difference:
    obj: str  # apiVersion/kind/name with the namespace abstracted
    path: str  # field path inside the object; "" when the whole object is missing
    a: Any
    b: Any
    explained_by: str | None

    @property
    def configured(self) -> bool:
        return self.explained_by is not None


def object_key(obj: Obj, cfg: StackConfig) -> str:
    name = str(obj["metadata"]["name"]).replace(cfg.namespace, NAMESPACE_TOKEN)
    return f"{obj['apiVersion']}/{obj['kind']}/{name}"


def flatten_config(cfg: StackConfig) -> dict[str, Any]:
    """Config leaves by key path (lists are leaves); models by name."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = value

    data = cfg.model_dump(by_alias=True)
    models = data.pop("models")
    walk("", data)
    for m in models:
        for k, v in m.items():
            out[f"models[{m['name']}].{k}"] = v
    return out


def _leaves(value: Any, path: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_leaves(v, f"{path}.{k}" if path else str(k)))
        return out
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        out = {}
        for i, v in enumerate(value):
            out.update(_leaves(v, f"{path}[{i}]"))
        return out
    return {path: value}


def _matches(config_value: Any, leaf: Any) -> bool:
    if isinstance(leaf, str) and isinstance(config_value, (str, int, float)) \
            and not isinstance(config_value, bool):
        text = str(config_value)
        return text == leaf or (len(text) >= 2 and text in leaf)
    return (bool(config_value == leaf) and type(config_value) is type(leaf)) or (
        isinstance(config_value, (int, float)) and isinstance(leaf, (int, float))
        and not isinstance(leaf, bool) and config_value == leaf)


def explain(a: Any, b: Any, flat_a: dict[str, Any], flat_b: dict[str, Any]) -> str | None:
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        # a list of scalars that differs element by element (arguments, hostnames)
        keys = [explain(x, y, flat_a, flat_b) for x, y in zip(a, b, strict=True) if x != y]
        if keys and all(keys):
            return keys[0]
    for key in sorted(flat_a.keys() & flat_b.keys()):
        va, vb = flat_a[key], flat_b[key]
        if va != vb and _matches(va, a) and _matches(vb, b):
            return key
    return None


def diff(cfg_a: StackConfig, cfg_b: StackConfig) -> list[Difference]:
    objs_a = {object_key(o, cfg_a): o for o in render(cfg_a)}
    objs_b = {object_key(o, cfg_b): o for o in render(cfg_b)}
    flat_a, flat_b = flatten_config(cfg_a), flatten_config(cfg_b)
    models_a = {m.name for m in cfg_a.models}
    models_b = {m.name for m in cfg_b.models}
    out: list[Difference] = []
    for key in sorted(objs_a.keys() | objs_b.keys()):
        oa, ob = objs_a.get(key), objs_b.get(key)
        if oa is None or ob is None:
            present = oa if oa is not None else ob
            assert present is not None
            owner = present["metadata"].get("labels", {}).get("app.kubernetes.io/name")
            only_one = owner in (models_a ^ models_b)
            out.append(Difference(obj=key, path="", a="present" if oa else "absent",
                                  b="present" if ob else "absent",
                                  explained_by="models" if only_one else None))
            continue
        la = _leaves({k: v for k, v in oa.items()})
        lb = _leaves({k: v for k, v in ob.items()})
        for path in sorted(la.keys() | lb.keys()):
            va, vb = la.get(path, "<absent>"), lb.get(path, "<absent>")
            if va == vb:
                continue
            if isinstance(va, str) and isinstance(vb, str) and \
                    va.replace(cfg_a.namespace, NAMESPACE_TOKEN) == \
                    vb.replace(cfg_b.namespace, NAMESPACE_TOKEN):
                by: str | None = "namespace"
            elif (va, vb) == (cfg_a.model_dump_json(), cfg_b.model_dump_json()):
                by = WHOLE_CONFIG  # the controller's copy of its stack's configuration
            else:
                by = explain(va, vb, flat_a, flat_b)
            out.append(Difference(obj=key, path=path, a=va, b=vb, explained_by=by))
    return out


def unexplained(diffs: list[Difference]) -> list[Difference]:
    return [d for d in diffs if not d.configured]


def format_diff(name_a: str, name_b: str, diffs: list[Difference]) -> str:
    if not diffs:
        return f"{name_a} and {name_b} render identical objects"
    lines = [f"--- {name_a}", f"+++ {name_b}"]
    current = None
    for d in diffs:
        if d.obj != current:
            current = d.obj
            lines.append(d.obj)
        why = f"configured: {d.explained_by}" if d.configured else "NOT CONFIGURED (drift)"
        where = d.path or "(object)"
        lines.append(f"  {where}: {d.a!r} -> {d.b!r}   [{why}]")
    bad = unexplained(diffs)
    lines.append(f"{len(diffs)} differences, {len(bad)} not explained by configuration")
    return "\n".join(lines)
