"""`modelrail model …`: train examples, register (convert + parity gate), list, show, verify,
and `sample` (a version's validation sample, or the ConfigMap a cluster reads it from).

Thin: parses flags, calls modelrail.models, prints text or JSON.

`list` shows every readable card; a card file that is torn or malformed does not hide the
others: each is reported on stderr (with -o json, as one JSON object
{"unreadable": [{"file", "reason", "repair"}, …]} so stdout stays the array of cards) and
the exit code is 6 (integrity: a stored file is damaged).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from modelrail.cli.output import add_output_flag, print_json, table
from modelrail.errors import CorruptStateError, IntegrityError
from modelrail.models.card import ModelCard, parse_ref
from modelrail.models.registry import ENV_VAR, Registry, parse_registry_flag

DEFAULT_SPEC = Path("models/examples.yaml")
DEFAULT_TRAIN_OUT = Path(".modelrail/train")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("model", help="convert, register and inspect models")
    msub = p.add_subparsers(dest="model_command", required=True, metavar="ACTION")

    def registry_flag(q: argparse.ArgumentParser) -> None:
        q.add_argument("--registry", default=None,
                       help=f"registry directory (default: ${ENV_VAR} or ~/.modelrail/registry)")

    t = msub.add_parser("train", help="train the example models of a spec file")
    t.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    t.add_argument("--out", type=Path, default=DEFAULT_TRAIN_OUT)
    t.add_argument("--only", nargs="*", metavar="NAME:VERSION", default=None)
    t.set_defaults(handler=_train)

    r = msub.add_parser("register", help="convert to ONNX, prove parity, register")
    r.add_argument("model_file", type=Path, help="fitted scikit-learn model (joblib/pickle)")
    r.add_argument("--data", type=Path, required=True,
                   help=".npz split with X_train, y_train, X_test, y_test")
    r.add_argument("--name", required=True)
    r.add_argument("--version", required=True)
    r.add_argument("--onnx", type=Path, default=None,
                   help="register this ONNX graph instead of converting (still parity-gated)")
    r.add_argument("--no-bentoml", action="store_true",
                   help="do not also save the model in BentoML's model store")
    registry_flag(r)
    add_output_flag(r)
    r.set_defaults(handler=_register)

    ls = msub.add_parser("list", help="list registered models")
    registry_flag(ls)
    add_output_flag(ls)
    ls.set_defaults(handler=_list)

    sm = msub.add_parser("sample", help="print a version's registered validation sample "
                                        "(JSON rows), or the ConfigMap a cluster's "
                                        "operator reads it from")
    sm.add_argument("ref", metavar="NAME:VERSION")
    sm.add_argument("--configmap", metavar="NAMESPACE", default=None,
                    help="print ConfigMap <name>-validation in NAMESPACE (for `kubectl "
                         "apply -f -`) instead of the bare rows")
    registry_flag(sm)
    sm.set_defaults(handler=_sample)

    for action, handler, text in (("show", _show, "print a model's card"),
                                  ("verify", _verify, "re-hash a model's stored copies")):
        q = msub.add_parser(action, help=text)
        q.add_argument("ref", metavar="NAME:VERSION")
        registry_flag(q)
        add_output_flag(q)
        q.set_defaults(handler=handler)


def _train(args: argparse.Namespace) -> int:
    from modelrail.models.train import load_spec, train_all

    for t in train_all(load_spec(args.spec), args.out, args.only):
        print(f"trained {t.name}:{t.version} -> {t.model_path}")
    return 0


def _register(args: argparse.Namespace) -> int:
    from modelrail.models.register import register_model

    result = register_model(
        model_path=args.model_file, data_path=args.data, name=args.name,
        version=args.version, registry=parse_registry_flag(args.registry),
        onnx_path=args.onnx, save_to_bentoml=not args.no_bentoml)
    if args.output == "json":
        print_json({"created": result.created, "card": result.card.model_dump(mode="json")})
    else:
        verb = "registered" if result.created else "already registered (same bytes)"
        print(f"{verb} {result.card.ref} sha256={result.card.sha256}")
        print(result.parity.report())
    return 0


def _list(args: argparse.Namespace) -> int:
    cards, unreadable = parse_registry_flag(args.registry).scan()
    if args.output == "json":
        print_json([c.model_dump(mode="json") for c in cards])
        if unreadable:
            print(json.dumps({"unreadable": [e.to_dict() for e in unreadable]}, indent=2),
                  file=sys.stderr)
    elif not cards and not unreadable:
        print("no models registered")
    else:
        if cards:
            print(table(("MODEL", "TASK", "ESTIMATOR", "SHA256", "METRIC",
                         "PARITY MAX |DIFF|"),
                        [(c.ref, c.task, c.estimator, c.sha256[:12], headline_metric(c),
                          f"{c.parity.max_abs_diff:.1e}") for c in cards]))
        for exc in unreadable:
            print(f"modelrail: error: {exc}", file=sys.stderr)
    return CorruptStateError.exit_code if unreadable else 0


def headline_metric(card: ModelCard) -> str:
    key = "accuracy" if card.task == "classification" else "r2"
    return f"{key}={card.metrics[key]:.3f}"


# a ConfigMap holds at most 1 MiB (the API server refuses more)
CONFIGMAP_LIMIT = 1024 * 1024


def _sample(args: argparse.Namespace) -> int:
    from modelrail.errors import InvalidInputError
    from modelrail.infra.manifests import validation_configmap

    name, version = parse_ref(args.ref)
    rows = parse_registry_flag(args.registry).sample(name, version)
    if args.configmap is None:
        print(json.dumps(rows))
        return 0
    manifest = validation_configmap(name, args.configmap, rows)
    text = json.dumps(manifest, indent=2)
    if len(text.encode()) > CONFIGMAP_LIMIT:
        raise InvalidInputError(f"the sample of {name}:{version} is {len(text.encode())} "
                                "bytes as a ConfigMap", where=args.ref,
                                accepted=f"at most {CONFIGMAP_LIMIT} bytes (1 MiB): register "
                                         "a smaller held-out sample")
    print(text)
    return 0


def _show(args: argparse.Namespace) -> int:
    name, version = parse_ref(args.ref)
    card = parse_registry_flag(args.registry).get(name, version)
    if args.output == "json":
        print_json(card.model_dump(mode="json"))
        return 0
    print(card_text(card))
    return 0


def card_text(card: ModelCard) -> str:
    lines = [
        f"model:        {card.ref}",
        f"sha256:       {card.sha256} ({card.size_bytes} bytes)",
        f"task:         {card.task} ({card.estimator})",
    ]
    for spec in card.inputs:
        lines.append(f"input:        {spec.name} {spec.datatype} {spec.shape}")
        if spec.feature_names:
            lines.append(f"  features:   {', '.join(spec.feature_names)}")
    lines += [f"output:       {s.name} {s.datatype} {s.shape}" for s in card.outputs]
    if card.class_labels is not None:
        names = f" ({', '.join(card.target_names)})" if card.target_names else ""
        lines.append(f"classes:      {card.class_labels}{names}")
    lines += [
        "metrics:      " + ", ".join(f"{k}={v:.4f}" for k, v in card.metrics.items()),
        f"training:     {card.training_data.rows} rows x {card.training_data.features} "
        f"features, sha256 {card.training_data.sha256}",
        f"held out:     {card.training_data.holdout_rows} rows, sha256 "
        f"{card.training_data.holdout_sha256}",
        f"parity:       {'passed' if card.parity.passed else 'failed'} on {card.parity.rows} "
        f"rows, {card.parity.label_mismatches} label mismatches, max |diff| "
        f"{card.parity.max_abs_diff:.2e} (relative {card.parity.max_rel_diff:.2e}), "
        f"tolerance {card.parity.tolerance_abs:g} + {card.parity.tolerance_rel:g}*|y|",
        "opset:        " + ", ".join(f"{k} {v}" for k, v in card.opset.items()),
        "libraries:    " + ", ".join(f"{k} {v}" for k, v in card.libraries.items()),
        f"created:      {card.created_at}",
        f"git commit:   {card.git_commit or 'unknown'}",
        f"source file:  sha256 {card.source_sha256}",
        f"bentoml tag:  {card.bentoml_tag or '-'}",
    ]
    return "\n".join(lines)


def _verify(args: argparse.Namespace) -> int:
    name, version = parse_ref(args.ref)
    v = verify_or_raise(parse_registry_flag(args.registry), name, version)
    if args.output == "json":
        print_json({"ref": v.card.ref, "sha256": v.card.sha256, "ok": True,
                    "registry_sha256": v.registry_sha256, "bentoml_sha256": v.bentoml_sha256})
    else:
        copies = "registry" + (" and BentoML store" if v.bentoml_sha256 else "")
        print(f"verified {v.card.ref}: sha256 {v.card.sha256} matches ({copies})")
    return 0


def verify_or_raise(registry: Registry, name: str, version: str) -> Any:
    v = registry.verify(name, version)
    if not v.ok:
        bad = v.registry_sha256 if v.registry_sha256 != v.card.sha256 else v.bentoml_sha256
        where = "registry copy" if v.registry_sha256 != v.card.sha256 else "BentoML copy"
        raise IntegrityError(
            f"sha256 mismatch for {v.card.ref}: registered {v.card.sha256}, {where} has {bad}",
            where=where, accepted="the file exactly as registered; re-register under a new "
                                  "version if the model changed")
    return v
