"""`modelrail cluster up|status|down`: a real Kubernetes cluster on this machine.

    modelrail cluster up [--nodes N] [--image REF …]
                                          etcd, API server, controller manager, scheduler,
                                          N × (containerd + kubelet), kube-proxy, CoreDNS,
                                          Traefik as the Gateway, Prometheus and
                                          metrics-server, inside the network namespace
                                          `modelrail-cluster`
    modelrail cluster status [-o json]     exit 0 when everything runs and the node is Ready
    modelrail cluster down [--purge]       nothing of it left on the machine
    modelrail cluster kubeconfig --service-account NS/NAME --out FILE
                                          a kubeconfig with a short-lived token of that
                                          account (how CI gets its credentials)

Binaries come from scripts/upstream/build.sh (the bootstrap runs it); state lives in
--state-dir (default: $MODELRAIL_CLUSTER_DIR or ./.modelrail/cluster).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from modelrail.cli.output import add_output_flag, print_json, table
from modelrail.exit_codes import ExitCode


def _state_dir(args: argparse.Namespace) -> Path:
    if args.state_dir is not None:
        return Path(args.state_dir)
    return Path(os.environ.get("MODELRAIL_CLUSTER_DIR", ".modelrail/cluster"))


def add_parser(sub: Any) -> None:
    p = sub.add_parser("cluster", help="a real Kubernetes cluster on this machine")
    csub = p.add_subparsers(dest="cluster_command", required=True, metavar="ACTION")
    up = csub.add_parser("up", help="start the cluster (or report the running one)")
    up.add_argument("--image", action="append", default=[],
                    help="a podman image the node should have (imported into containerd; "
                         "no registry is needed); repeatable")
    up.add_argument("--nodes", type=_nodes, default=None, metavar="N",
                    help="how many nodes (kubelet + containerd each; default 1, or as "
                         "many as the running cluster has): each "
                         "reports this machine's CPUs, so N nodes schedule N times its "
                         "CPUs in requests (the prod stack asks for 6 CPUs: --nodes 4)")
    up.add_argument("--timeout", type=float, default=180.0)
    st = csub.add_parser("status", help="what runs; exit 0 only if the node is Ready")
    down = csub.add_parser("down", help="stop everything and leave nothing behind")
    down.add_argument("--purge", action="store_true",
                      help="also delete certificates, etcd's data and containerd's images")
    kc = csub.add_parser("kubeconfig", help="a kubeconfig acting as a ServiceAccount, with "
                                            "a short-lived token (CI's, for rollout --kube)")
    kc.add_argument("--service-account", required=True, metavar="NAMESPACE/NAME",
                    help="e.g. modelrail-dev/modelrail-ci (the stack's CI account)")
    kc.add_argument("--out", required=True, help="the kubeconfig file to write (0600)")
    kc.add_argument("--duration", type=int, default=3600, metavar="SECONDS",
                    help="the token's lifetime, 600..86400 (default 3600)")
    kc.set_defaults(handler=_kubeconfig)
    for q in (up, st, down, kc):
        q.add_argument("--state-dir", default=None,
                       help="the cluster's folder (default: $MODELRAIL_CLUSTER_DIR or "
                            "./.modelrail/cluster)")
        add_output_flag(q)
    up.set_defaults(handler=_up)
    st.set_defaults(handler=_status)
    down.set_defaults(handler=_down)


def _nodes(text: str) -> int:
    from modelrail.cluster.config import MAX_NODES

    if not text.isdigit() or not 1 <= int(text) <= MAX_NODES:
        raise argparse.ArgumentTypeError(
            f"must be a whole number from 1 to {MAX_NODES}, got {text!r}")
    return int(text)


def _print_status(result: Any, output: str) -> int:
    if output == "json":
        print_json(result.to_dict())
    else:
        state = "running" if result.running else "not running"
        print(f"cluster: {state}  (state {result.state_dir})")
        if result.kubeconfig:
            print(f"  API server  {result.server}")
            print(f"  kubeconfig  {result.kubeconfig}   (export KUBECONFIG=…)")
        if result.nodes_ready:
            print("  nodes       " + ", ".join(f"{n} {'Ready' if ok else 'NOT Ready'}"
                                                for n, ok in result.nodes_ready.items()))
        gateway = getattr(result, "gateway", None)
        if gateway:
            print(f"  gateway     http {gateway['http']}  grpc (h2c) {gateway['grpc']}  "
                  "(send the route's hostname as Host / :authority)")
        prometheus = getattr(result, "prometheus", "")
        if prometheus:
            print(f"  prometheus  http://{prometheus}   "
                  "(in the cluster: http://prometheus.monitoring.svc:9090)")
        rows = [[name, "running" if ok else "stopped"]
                for name, ok in sorted(result.components.items())]
        if rows:
            print(table(["COMPONENT", "STATE"], rows))
        if result.timings:
            print("  started in " + ", ".join(f"{k} {v:.1f}s"
                                               for k, v in result.timings.items()))
        for problem in result.problems:
            print(f"  problem: {problem}")
    return 0 if result.running else ExitCode.ENV_NOT_UP


def _up(args: argparse.Namespace) -> int:
    from modelrail.cluster import up

    return _print_status(up(_state_dir(args), nodes=args.nodes,
                            images_to_import=list(args.image), timeout=args.timeout),
                         args.output)


def _kubeconfig(args: argparse.Namespace) -> int:
    from modelrail.cluster import credentials, pki
    from modelrail.cluster.api import Api
    from modelrail.cluster.config import Layout
    from modelrail.cluster.errors import ClusterError

    lay = Layout(_state_dir(args).resolve())
    if not lay.admin_kubeconfig.is_file():
        raise ClusterError("no cluster in this state folder", where=str(lay.root),
                           repair="`modelrail cluster up` first")
    keys = pki.Pki(lay.pki)
    with Api(keys) as admin:
        out = credentials.write_service_account_kubeconfig(
            admin, keys.ca, args.service_account, Path(args.out), seconds=args.duration)
    if args.output == "json":
        print_json({"kubeconfig": str(out), "service_account": args.service_account,
                    "seconds": args.duration})
    else:
        print(f"{out}: acts as {args.service_account} for {args.duration} s")
    return 0


def _status(args: argparse.Namespace) -> int:
    from modelrail.cluster import status

    return _print_status(status(_state_dir(args)), args.output)


def _down(args: argparse.Namespace) -> int:
    from modelrail.cluster import down, leftovers

    report = down(_state_dir(args), purge=args.purge)
    left = leftovers(_state_dir(args))
    if args.output == "json":
        print_json({**report.to_dict(), "leftovers": left})
    else:
        print(f"cluster down in {report.seconds:.1f}s: stopped {len(report.stopped)}, "
              f"unmounted {report.unmounted}")
        for item in [*report.problems, *left]:
            print(f"  left: {item}")
    return 0 if not left and not report.problems else ExitCode.FAILURE
