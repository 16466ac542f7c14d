"""What the cluster installs into itself once the node is Ready: CoreDNS (a Deployment of
the image made from the upstream binary, the `kube-dns` Service at 10.96.0.10, its RBAC),
as pure manifest builders.

CoreDNS listens on 1053 as UID 65532 (the Service maps 53 to it), so it needs no
capability and passes the `restricted` Pod Security level. Its Corefile has no `forward`:
nothing beyond this machine is reachable, so only cluster names resolve.
"""

from __future__ import annotations

from typing import Any

from modelrail.cluster import config as c

NAMESPACE = "kube-system"
LABELS = {"k8s-app": "kube-dns"}

COREFILE = f"""\
.:1053 {{
    errors
    health :8080 {{
        lameduck 5s
    }}
    ready :8181
    kubernetes {c.CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }}
    prometheus :9153
    cache 30
    loop
    reload
    loadbalance
}}
"""


def restricted_security_context() -> dict[str, Any]:
    """A container security context that the `restricted` Pod Security level admits."""
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}}


def restricted_namespace(name: str) -> dict[str, Any]:
    """A namespace of the cluster's add-ons, held to the `restricted` Pod Security level."""
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/enforce-version": "latest",
                "app.kubernetes.io/part-of": "modelrail"}}}


def coredns(image: str) -> list[tuple[str, dict[str, Any]]]:
    """(collection path, object) pairs, in the order they must be created."""
    meta = {"namespace": NAMESPACE, "labels": LABELS}
    return [
        ("/api/v1/namespaces/kube-system/serviceaccounts",
         {"apiVersion": "v1", "kind": "ServiceAccount",
          "metadata": {"name": "coredns", **meta}}),
        ("/apis/rbac.authorization.k8s.io/v1/clusterroles",
         {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
          "metadata": {"name": "system:coredns"},
          "rules": [
              {"apiGroups": [""], "resources": ["endpoints", "services", "pods",
                                                "namespaces"],
               "verbs": ["list", "watch"]},
              {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
               "verbs": ["list", "watch"]},
          ]}),
        ("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
         {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
          "metadata": {"name": "system:coredns"},
          "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                      "name": "system:coredns"},
          "subjects": [{"kind": "ServiceAccount", "name": "coredns",
                        "namespace": NAMESPACE}]}),
        ("/api/v1/namespaces/kube-system/configmaps",
         {"apiVersion": "v1", "kind": "ConfigMap",
          "metadata": {"name": "coredns", **meta}, "data": {"Corefile": COREFILE}}),
        ("/apis/apps/v1/namespaces/kube-system/deployments",
         {"apiVersion": "apps/v1", "kind": "Deployment",
          "metadata": {"name": "coredns", **meta},
          "spec": {
              "replicas": 1, "selector": {"matchLabels": LABELS},
              "template": {"metadata": {"labels": LABELS}, "spec": {
                  "serviceAccountName": "coredns", "priorityClassName":
                      "system-cluster-critical",
                  "dnsPolicy": "Default",
                  "securityContext": {"runAsNonRoot": True, "runAsUser": 65532,
                                      "runAsGroup": 65532,
                                      "seccompProfile": {"type": "RuntimeDefault"}},
                  "containers": [{
                      "name": "coredns", "image": image, "imagePullPolicy": "Never",
                      "args": ["-conf", "/etc/coredns/Corefile"],
                      "ports": [{"name": "dns", "containerPort": 1053, "protocol": "UDP"},
                                {"name": "dns-tcp", "containerPort": 1053,
                                 "protocol": "TCP"},
                                {"name": "metrics", "containerPort": 9153,
                                 "protocol": "TCP"}],
                      "resources": {"requests": {"cpu": "50m", "memory": "50Mi"},
                                    "limits": {"memory": "170Mi"}},
                      "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns",
                                        "readOnly": True}],
                      "livenessProbe": {"httpGet": {"path": "/health", "port": 8080},
                                        "initialDelaySeconds": 10, "periodSeconds": 10},
                      "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181},
                                         "periodSeconds": 2},
                      "securityContext": restricted_security_context(),
                  }],
                  "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
              }},
          }}),
        ("/api/v1/namespaces/kube-system/services",
         {"apiVersion": "v1", "kind": "Service",
          "metadata": {"name": "kube-dns", **meta,
                       "labels": {**LABELS, "kubernetes.io/name": "CoreDNS"}},
          "spec": {"selector": LABELS, "clusterIP": c.DNS_SERVICE_IP,
                   "ports": [{"name": "dns", "port": 53, "targetPort": 1053,
                              "protocol": "UDP"},
                             {"name": "dns-tcp", "port": 53, "targetPort": 1053,
                              "protocol": "TCP"},
                             {"name": "metrics", "port": 9153, "protocol": "TCP"}]}}),
    ]
