"""A real Kubernetes cluster on this machine (1–8 nodes), entirely inside a network
namespace.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler, each node's containerd (CRI)
and kubelet, and kube-proxy run as processes in the namespace `modelrail-cluster`; the
host reaches the API server at https://10.214.0.2:6443 over a veth pair and nothing leaves
the machine. CoreDNS runs as a pod, Traefik as the Gateway API implementation (the Gateway
`gateway-system/modelrail-gateway` at 10.96.0.80: HTTP on 8000 and 80, gRPC on 8001),
Prometheus (monitoring/prometheus at 10.96.0.90:9090) and metrics-server.
`modelrail cluster up|status|down|kubeconfig` drives it.

  config.py      names, addresses, ranges, ports, paths under the state folder
  pki.py         CA, certificates and keys (openssl)
  components.py  each component's argv and configuration files
  netns.py       the namespace, veth pair, host routes; running inside it
  supervise.py   processes: start in a session, record, stop (SIGTERM, then SIGKILL)
  images.py      the sandbox (pause) image, CoreDNS's, Traefik's, Prometheus's and
                 metrics-server's, importing into every node's containerd
  api.py         the few API calls `up` and `status` make (httpx, admin certificate)
  dns.py         one DNS question (is the cluster's DNS answering?)
  addons.py      CoreDNS manifests
  gateway.py     the Gateway API CRDs, Traefik, GatewayClass, Gateway, Service; waiting
  monitoring.py  Prometheus (pod discovery) and metrics-server (the metrics API for HPAs)
  credentials.py a ServiceAccount's short-lived token in a kubeconfig (CI's credentials)
  hostfiles.py   what the kubelet and libcni write outside the state folder
  errors.py      ClusterError
  node.py        up, status, down, leftovers
"""

from modelrail.cluster.errors import ClusterError
from modelrail.cluster.node import ClusterStatus, DownReport, down, leftovers, status, up

__all__ = ["ClusterError", "ClusterStatus", "DownReport", "down", "leftovers", "status", "up"]
