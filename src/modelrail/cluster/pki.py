"""The cluster's certificates and keys, made with the `openssl` command line.

The `cryptography` package is not in requirements.lock (nor installed), and OpenSSL 3 is
on every Debian machine, so this module runs `openssl req`/`x509`/`genpkey`. Keys are
ECDSA P-256 (fast to make, accepted by every component); files are 0600 for keys.

One cluster CA signs the serving and client certificates (etcd, API server, kubelet,
every component's client identity); the controller manager signs CSRs with it too. A
separate front-proxy CA is the request-header CA for aggregated APIs (metrics-server).
The service-account signing pair is separate and not a certificate. `ensure_pki` makes
only what is missing, so a second `up` on the same folder keeps the cluster's identity.
"""

from __future__ import annotations

import base64
import os
import secrets
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from modelrail.cluster import config as c
from modelrail.cluster.errors import ClusterError

CA_DAYS = 3650
LEAF_DAYS = 365


@dataclass(frozen=True)
class Leaf:
    """One certificate to issue: its file stem, subject, usage and alternative names."""

    name: str
    cn: str
    orgs: tuple[str, ...] = ()
    server: bool = False
    client: bool = False
    dns: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    ca: str = "ca"


def leaves(nodes: int = 1) -> list[Leaf]:
    """Every leaf certificate an N-node cluster uses (each kubelet has its own client
    identity, system:node:<name>, which the Node authorizer and NodeRestriction hold it
    to, and its own serving certificate for its address)."""
    api_dns = ("kubernetes", "kubernetes.default", "kubernetes.default.svc",
               f"kubernetes.default.svc.{c.CLUSTER_DOMAIN}", "localhost")
    return [
        Leaf("etcd-server", "etcd", server=True, client=True, dns=("localhost",),
             ips=("127.0.0.1",)),
        Leaf("apiserver-etcd-client", "kube-apiserver-etcd-client", client=True),
        Leaf("apiserver", "kube-apiserver", server=True, dns=api_dns,
             ips=(c.NODE_IP, "127.0.0.1", c.KUBERNETES_SERVICE_IP)),
        Leaf("apiserver-kubelet-client", "kube-apiserver-kubelet-client",
             orgs=("system:masters",), client=True),
        Leaf("front-proxy-client", "front-proxy-client", client=True, ca="front-proxy-ca"),
        Leaf("admin", "modelrail-admin", orgs=("system:masters",), client=True),
        Leaf("controller-manager", "system:kube-controller-manager", client=True),
        Leaf("scheduler", "system:kube-scheduler", client=True),
        Leaf("kube-proxy", "system:kube-proxy", client=True),
        *[leaf for i in range(nodes) for leaf in _kubelet_leaves(i)],
    ]


def _kubelet_leaves(i: int) -> list[Leaf]:
    suffix = "" if i == 0 else f"-{i}"
    name, ip = c.node_name(i), c.node_ip(i)
    return [Leaf(f"kubelet{suffix}", f"system:node:{name}", orgs=("system:nodes",),
                 client=True),
            Leaf(f"kubelet-server{suffix}", f"system:node:{name}", orgs=("system:nodes",),
                 server=True, dns=(name, "localhost"), ips=(ip, "127.0.0.1"))]


@dataclass(frozen=True)
class Pki:
    """Paths of the files under <state>/pki."""

    root: Path

    def crt(self, name: str) -> Path:
        return self.root / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.root / f"{name}.key"

    @property
    def ca(self) -> Path:
        return self.crt("ca")

    @property
    def sa_key(self) -> Path:
        return self.root / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.root / "sa.pub"

    @property
    def encryption_config(self) -> Path:
        return self.root / "encryption-config.yaml"


def _openssl(*args: str) -> None:
    try:
        proc = subprocess.run(["openssl", *args], capture_output=True, check=False,
                              timeout=60)
    except FileNotFoundError as exc:
        raise ClusterError("openssl is not installed", where="PATH",
                           accepted="Debian's openssl package") from exc
    if proc.returncode != 0:
        raise ClusterError(f"openssl {args[0]} failed: "
                           f"{proc.stderr.decode(errors='replace')[-1500:]}",
                           where=" ".join(args[:6]))


def _new_key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
             "-out", str(path))
    os.chmod(path, 0o600)


def _subject(cn: str, orgs: tuple[str, ...] = ()) -> str:
    return "".join(f"/O={o}" for o in orgs) + f"/CN={cn}"


def _make_ca(pki: Pki, name: str, cn: str) -> None:
    key = pki.key(name)
    _new_key(key)
    _openssl("req", "-x509", "-new", "-key", str(key), "-sha256", "-days", str(CA_DAYS),
             "-subj", _subject(cn), "-out", str(pki.crt(name)),
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature")


def _extensions(leaf: Leaf) -> str:
    usages = [u for u, on in (("serverAuth", leaf.server), ("clientAuth", leaf.client)) if on]
    lines = ["basicConstraints=critical,CA:FALSE",
             "keyUsage=critical,digitalSignature,keyEncipherment",
             f"extendedKeyUsage={','.join(usages)}"]
    sans = [f"DNS:{d}" for d in leaf.dns] + [f"IP:{i}" for i in leaf.ips]
    if sans:
        lines.append(f"subjectAltName={','.join(sans)}")
    return "\n".join(lines) + "\n"


def _issue(pki: Pki, leaf: Leaf) -> None:
    key = pki.key(leaf.name)
    _new_key(key)
    with tempfile.TemporaryDirectory(prefix="mr-pki-") as tmp:
        csr = Path(tmp) / "req.csr"
        ext = Path(tmp) / "ext.cnf"
        ext.write_text(_extensions(leaf))
        _openssl("req", "-new", "-key", str(key), "-subj", _subject(leaf.cn, leaf.orgs),
                 "-out", str(csr))
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(pki.crt(leaf.ca)),
                 "-CAkey", str(pki.key(leaf.ca)), "-set_serial",
                 f"0x{secrets.token_hex(16)}", "-days", str(LEAF_DAYS), "-sha256",
                 "-extfile", str(ext), "-out", str(pki.crt(leaf.name)))


def ensure_pki(root: Path, *, nodes: int = 1) -> Pki:
    """Make whatever is missing under `root`: the two CAs, every leaf (of `nodes`
    nodes), the service-account key pair and the secrets-encryption config."""
    pki = Pki(root)
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    for name, cn in (("ca", "modelrail-cluster-ca"),
                     ("front-proxy-ca", "modelrail-front-proxy-ca")):
        if not (pki.crt(name).is_file() and pki.key(name).is_file()):
            _make_ca(pki, name, cn)
    for leaf in leaves(nodes):
        if not (pki.crt(leaf.name).is_file() and pki.key(leaf.name).is_file()):
            _issue(pki, leaf)
    if not (pki.sa_key.is_file() and pki.sa_pub.is_file()):
        _new_key(pki.sa_key)
        _openssl("pkey", "-in", str(pki.sa_key), "-pubout", "-out", str(pki.sa_pub))
    if not pki.encryption_config.is_file():
        key_b64 = base64.b64encode(secrets.token_bytes(32)).decode()
        pki.encryption_config.write_text(
            "apiVersion: apiserver.config.k8s.io/v1\n"
            "kind: EncryptionConfiguration\n"
            "resources:\n"
            "  - resources: [secrets]\n"
            "    providers:\n"
            "      - secretbox:\n"
            "          keys:\n"
            f"            - name: key1\n              secret: {key_b64}\n"
            "      - identity: {}\n")
        os.chmod(pki.encryption_config, 0o600)
    return pki
