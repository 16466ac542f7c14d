"""`modelrail rollout … --kube`: the same commands and exit codes against a cluster.

The ModelRollout resource is the interface, as `kubectl` would use it: `start` sets
`spec.version` (and clears `spec.abort`; `--no-pre-traffic` sets
`spec.preTrafficAnalysis: false`, `--no-shadow` `spec.shadowPhase: false`), `promote` sets
the annotation api.PROMOTE_ANNOTATION to the paused rollout's seq, `abort` sets
`spec.abort`; `status` and `--wait` read `.status` written by the operator. Kubeconfig
($KUBECONFIG, --kubeconfig) or the in-cluster service account; the namespace from --namespace, else
$MODELRAIL_NAMESPACE, else the kubeconfig context's.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from modelrail.cli.output import print_json
from modelrail.errors import InvalidInputError, NotFoundError
from modelrail.exit_codes import ExitCode
from modelrail.rollout import api
from modelrail.rollout.core.analysis import describe_shadow, shadow_summary
from modelrail.rollout.core.spec import Phase


def add_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kube", action="store_true",
                   help="act on the ModelRollout in a cluster instead of a local environment")
    p.add_argument("--namespace", default=None, help="with --kube: the environment's "
                                                     "namespace")
    p.add_argument("--kubeconfig", default=None, help="with --kube: kubeconfig file")


class Kube:
    """The ModelRollouts of one namespace, through kube/platform.py (the only module that
    imports the Kubernetes client; imported here only when --kube is given)."""

    def __init__(self, args: argparse.Namespace) -> None:
        import os

        from modelrail.rollout.kube import platform

        ns = (args.namespace or os.environ.get("MODELRAIL_NAMESPACE")
              or platform.context_namespace(args.kubeconfig))
        if not ns:
            raise InvalidInputError("no namespace for --kube", where="--namespace",
                                    accepted="--namespace, $MODELRAIL_NAMESPACE, or a "
                                             "kubeconfig context with a namespace")
        self.ns = ns
        self.objects = platform.connect(namespace=ns, kubeconfig=args.kubeconfig,
                                        user_agent="modelrail-cli")

    def get(self, model: str) -> dict[str, Any]:
        obj = self.objects.rollout(model)
        if obj is None:
            raise NotFoundError(f"no {api.KIND} {model!r} in namespace {self.ns}",
                                where="--model", accepted="a model of the environment "
                                "(created by `pulumi up`)")
        return obj

    def patch(self, model: str, body: dict[str, Any]) -> None:
        self.objects.patch_rollout(model, body)


def summary(obj: dict[str, Any]) -> dict[str, Any]:
    """What `status` prints; `exit_code` only once the rollout is over and cleaned up."""
    st = obj.get("status") or {}
    phase = st.get("phase", "Pending")
    record = st.get("rollout")
    done = record is None or bool(record.get("finished"))
    return {"model": obj["spec"]["model"], "desired": obj["spec"]["version"],
            "stable": st.get("stableVersion"), "canary": st.get("canaryVersion"),
            "phase": phase, "weight": st.get("canaryWeight", 0),
            "message": st.get("message", ""),
            "exit_code": api.exit_code_of(phase) if done else None,
            "last_analysis": st.get("lastAnalysis"),
            # the shadow phase's evidence, from the controller's record (None without one)
            "shadow": shadow_summary(((record or {}).get("status") or {}).get("shadow")),
            "conditions": [c for c in st.get("conditions") or [] if c.get("status") == "False"]}


def ended_before(s: dict[str, Any], version: str) -> str | None:
    """The phase `version`'s last rollout ended in, if it ended without being promoted
    (`summary` of the ModelRollout); the operator does not start it again."""
    if s["canary"] == version and s["exit_code"] is not None \
            and s["phase"] != Phase.SUCCEEDED.value:
        return str(s["phase"])
    return None


# `rollout start` flags of local environments only: with --kube the policy is the
# ModelRollout's spec (the stack's modelrail:rollout, written by `pulumi up`), the sample
# its `<model>-validation` ConfigMap, the load its Locust Jobs
LOCAL_ONLY = {"sample": None, "registry": None, "steps": None, "step_seconds": None,
              "progress_deadline": None, "interval": 3.0, "load_users": 2,
              "no_grpc_load": False}


def start(args: argparse.Namespace, model: str, version: str) -> int:
    given = [f"--{k.replace('_', '-')}" for k, default in LOCAL_ONLY.items()
             if getattr(args, k, default) != default]
    if given:
        raise InvalidInputError(f"{', '.join(given)} cannot be used with --kube",
                                where="rollout start", accepted="with --kube: --model, "
                                "--wait, --timeout, --no-pre-traffic, --no-shadow; the policy "
                                "is the ModelRollout's spec (the stack's modelrail:rollout, "
                                "applied by `pulumi up`)")
    kube = Kube(args)
    obj = kube.get(model)
    s = summary(obj)
    if s["stable"] == version:
        raise InvalidInputError(f"{model}:{version} is already stable in {kube.ns}",
                                where="--model", accepted="a different version")
    ended = ended_before(s, version)
    if ended is not None:
        raise InvalidInputError(
            f"{model}:{version} already ended {ended} in {kube.ns}: the operator rolls a "
            "version out once, so --wait would only repeat that verdict",
            where="--model", accepted="a new version (register the candidate again under "
            "another version), or `rollout status --kube` for that rollout's verdict")
    kube.patch(model, {"spec": {"version": version, "abort": False,
                                "preTrafficAnalysis": not args.no_pre_traffic,
                                "shadowPhase": not args.no_shadow}})
    if args.output == "text":
        print(f"rollout of {model}:{version} requested in namespace {kube.ns}")
    if not args.wait:
        if args.output == "json":
            print_json(summary(kube.get(model)))
        return 0
    return follow(kube, model, version, args.output, args.timeout)


def follow(kube: Kube, model: str, version: str | None, output: str, timeout: float) -> int:
    started = time.monotonic()
    last = None
    while True:
        s = summary(kube.get(model))
        mine = version is None or s["canary"] == version
        line = (s["phase"], s["weight"], s["message"])
        if output == "text" and mine and line != last:
            print(f"[{time.monotonic() - started:6.1f}s] {s['phase']:<12} canary "
                  f"{s['weight']:>3}%  {s['message']}", flush=True)
            last = line
        if mine and s["exit_code"] is not None and s["canary"] is not None:
            code = int(s["exit_code"])
            break
        if time.monotonic() - started > timeout:
            code = s["exit_code"] = ExitCode.TIMED_OUT
            break
        time.sleep(0.5)
    if output == "json":
        print_json(s)
    else:
        print(f"{s['phase'].upper()}: {model} {s['canary']} ({s['message']}) exit {code}")
    return code


def status(args: argparse.Namespace) -> int:
    kube = Kube(args)
    model = _model(args)
    if args.watch:
        return follow(kube, model, None, args.output, args.timeout)
    s = summary(kube.get(model))
    if args.output == "json":
        print_json(s)
    else:
        print(f"{model}: stable {s['stable']} canary {s['canary']}: {s['phase']} at "
              f"{s['weight']}% — {s['message']}")
        shadow = describe_shadow(s["shadow"])
        if shadow:
            print(f"  {shadow}")
        for c in s["conditions"]:
            print(f"  {c['type']}: {c.get('reason', '')}: {c.get('message', '')}")
    return int(s["exit_code"] or 0)


def command(args: argparse.Namespace) -> int:
    kube = Kube(args)
    model = _model(args)
    obj = kube.get(model)
    st = obj.get("status") or {}
    if args.command == "promote":
        if st.get("phase") != Phase.PAUSED.value:
            raise InvalidInputError(f"the rollout of {model} is {st.get('phase')}, not paused "
                                    "at a manual gate", where="promote",
                                    accepted="promote passes a manual gate")
        seq = ((st.get("rollout") or {}).get("status") or {}).get("seq", 0)
        kube.patch(model, {"metadata": {"annotations": {api.PROMOTE_ANNOTATION: str(seq)}}})
    else:
        kube.patch(model, {"spec": {"abort": True}})
    print(f"{args.command} requested for {model} in {kube.ns}")
    return 0


def _model(args: argparse.Namespace) -> str:
    if not args.model:
        raise InvalidInputError("--model is required with --kube", where="--model",
                                accepted="the model's name, e.g. iris")
    return str(args.model).split(":", 1)[0]
