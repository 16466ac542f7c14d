"""`modelrail demo`: the README's main job.

For now: train the example models (models/examples.yaml), register each through the
conversion + parity gate, verify every stored copy, and print what was registered.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from modelrail.cli.model import DEFAULT_SPEC, DEFAULT_TRAIN_OUT, headline_metric, verify_or_raise
from modelrail.cli.output import table


def add_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the local end-to-end demo")
    p.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    p.add_argument("--work-dir", type=Path, default=DEFAULT_TRAIN_OUT)
    p.add_argument("--registry", default=None)
    p.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from modelrail.models.register import register_model
    from modelrail.models.registry import parse_registry_flag
    from modelrail.models.train import load_spec, train_all

    registry = parse_registry_flag(args.registry)
    started = time.monotonic()
    print(f"== training example models from {args.spec}")
    trained = train_all(load_spec(args.spec), args.work_dir)
    print(f"== registering {len(trained)} models in {registry.root} (parity gate on)")
    rows = []
    for t in trained:
        result = register_model(model_path=t.model_path, data_path=t.data_path, name=t.name,
                                version=t.version, registry=registry)
        card = result.card
        v = verify_or_raise(registry, card.name, card.version)
        p = card.parity
        rows.append((card.ref, card.estimator, card.sha256[:12], headline_metric(card),
                     f"{p.max_abs_diff:.1e}", f"{p.label_mismatches}/{p.rows}",
                     "new" if result.created else "existing",
                     "ok" + (" (+bentoml)" if v.bentoml_sha256 else "")))
    print(table(("MODEL", "ESTIMATOR", "SHA256", "METRIC", "MAX |DIFF|", "LABEL MISMATCH",
                 "REGISTERED", "VERIFIED"), rows))
    print(f"== {len(rows)} models registered and verified in {time.monotonic() - started:.1f}s")
    return 0
