"""A real one-node Kubernetes cluster on this machine, entirely inside a network namespace.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler, containerd (CRI), the
kubelet and kube-proxy run as processes in the namespace `modelrail-cluster`; the host
reaches the API server at https://10.214.0.2:6443 over a veth pair and nothing leaves the
machine. CoreDNS runs as a pod, and Traefik as the Gateway API implementation (the
Gateway `gateway-system/modelrail-gateway` at 10.96.0.80: HTTP on 80, gRPC on 8001).
`modelrail cluster up|status|down` drives it.

  config.py      names, addresses, ranges, ports, paths under the state folder
  pki.py         CA, certificates and keys (openssl)
  components.py  each component's argv and configuration files
  netns.py       the namespace, veth pair, host routes; running inside it
  supervise.py   processes: start in a session, record, stop (SIGTERM, then SIGKILL)
  images.py      the sandbox (pause) image, CoreDNS's, Traefik's, importing into containerd
  api.py         the few API calls `up` and `status` make (httpx, admin certificate)
  dns.py         one DNS question (is the cluster's DNS answering?)
  addons.py      CoreDNS manifests
  gateway.py     the Gateway API CRDs, Traefik, GatewayClass, Gateway, Service; waiting
  hostfiles.py   what the kubelet and libcni write outside the state folder
  errors.py      ClusterError
  node.py        up, status, down, leftovers
"""

from modelrail.cluster.errors import ClusterError
from modelrail.cluster.node import ClusterStatus, DownReport, down, leftovers, status, up

__all__ = ["ClusterError", "ClusterStatus", "DownReport", "down", "leftovers", "status", "up"]
