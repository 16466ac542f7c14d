"""A pod spec, as the Pulumi program declares it, turned into `podman run` arguments.

Pure: no podman, no I/O. `container_run(pod_spec, …)` reads the same dict the Deployment
(or Job) carries (modelrail.infra.manifests) and maps every field a kubelet would honour:

  securityContext   runAsUser/runAsGroup → --user, fsGroup → --group-add, runAsNonRoot →
                    refused if the user is 0 (the image's own USER is checked by run.py),
                    readOnlyRootFilesystem → --read-only with no tmpfs of podman's own,
                    capabilities.drop/add → --cap-drop/--cap-add,
                    allowPrivilegeEscalation: false → no-new-privileges,
                    seccompProfile RuntimeDefault → podman's default profile (never
                    unconfined)
  volumes           emptyDir → a tmpfs at each mountPath (mode 0777 like a kubelet's
                    emptyDir, sizeLimit → tmpfs size), nothing else writable
  env, args, command, ports (container ports, on the pod's own address),
  resources.limits  → --cpus/--memory; requests only schedule, so they map to nothing
  probes            → Probe objects run.py polls like a kubelet (httpGet)
  terminationGracePeriodSeconds → --stop-timeout; terminationMessagePath → a bind-mounted
                    host file, read back like a kubelet's termination message
  lifecycle.preStop.sleep → run.py waits that long before SIGTERM, inside the grace
                    period, as the kubelet does

A field it does not know is an error (UnsupportedFieldError), never silently dropped: if
the program's Deployment gains a field, the image tests fail until it is mapped here or set
aside in IGNORED with the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from modelrail.errors import InvalidInputError

TERMINATION_LOG = "/dev/termination-log"
# fields with no meaning outside a cluster, and why
IGNORED: dict[str, str] = {
    "serviceAccountName": "no API server to authenticate to outside a cluster",
    "automountServiceAccountToken": "no token exists outside a cluster (false: none)",
    "restartPolicy": "the caller (a test, the local platform) decides about restarts",
    "resources.requests": "requests only place a pod on a node",
}
POD_FIELDS = {"securityContext", "terminationGracePeriodSeconds", "containers", "volumes",
              *(k for k in IGNORED if "." not in k)}
CONTAINER_FIELDS = {"name", "image", "args", "command", "ports", "env", "resources",
                    "readinessProbe", "livenessProbe", "startupProbe", "securityContext",
                    "volumeMounts", "terminationMessagePolicy", "terminationMessagePath",
                    "lifecycle"}
POD_SECURITY = {"runAsNonRoot", "runAsUser", "runAsGroup", "fsGroup", "seccompProfile"}
CONTAINER_SECURITY = {"allowPrivilegeEscalation", "readOnlyRootFilesystem", "runAsNonRoot",
                      "runAsUser", "runAsGroup", "capabilities", "seccompProfile"}
PROBE_FIELDS = {"httpGet", "periodSeconds", "failureThreshold", "successThreshold",
                "initialDelaySeconds", "timeoutSeconds"}


class UnsupportedFieldError(InvalidInputError):
    """The pod spec has a field this runner does not map (it would be silently lost)."""


@dataclass(frozen=True)
class Probe:
    path: str
    port: int
    period: float = 10.0
    failure_threshold: int = 3
    success_threshold: int = 1
    initial_delay: float = 0.0
    timeout: float = 1.0


@dataclass(frozen=True)
class ContainerRun:
    """Everything needed to start one container of a pod the way a kubelet would."""

    name: str
    image: str
    args: tuple[str, ...]  # `podman run` options, then the image, then its command
    user: int
    ports: dict[str, int]
    env: dict[str, str]
    writable: tuple[str, ...]  # the only paths the container may write (emptyDirs)
    grace_seconds: int
    readiness: Probe | None = None
    liveness: Probe | None = None
    startup: Probe | None = None
    termination_message_path: str = TERMINATION_LOG
    fallback_to_logs: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    pre_stop_seconds: int = 0  # lifecycle.preStop.sleep: serve on this long after stop


def _unknown(obj: dict[str, Any], known: set[str], where: str) -> None:
    extra = sorted(set(obj) - known)
    if extra:
        raise UnsupportedFieldError(f"{', '.join(extra)} not mapped to the container runtime",
                                    where=where, accepted=", ".join(sorted(known)))


_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|Ti|k|M|G|T)?$")
_FACTORS = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3,
            "M": 10**6, "G": 10**9, "T": 10**12}


def cpus(value: str | int | float) -> float:
    """A Kubernetes CPU quantity ("250m", "1", 2) in cores."""
    match = _QUANTITY.match(str(value))
    if not match or match.group(2) not in (None, "m"):
        raise InvalidInputError(f"invalid CPU quantity {value!r}", where="resources",
                                accepted='cores ("1", "0.5") or millicores ("250m")')
    n = float(match.group(1))
    return n / 1000 if match.group(2) == "m" else n


def memory_bytes(value: str | int) -> int:
    """A Kubernetes memory quantity ("512Mi", "1G", 1048576) in bytes."""
    match = _QUANTITY.match(str(value))
    if not match or match.group(2) == "m":
        raise InvalidInputError(f"invalid memory quantity {value!r}", where="resources",
                                accepted='bytes with an optional suffix: Ki Mi Gi Ti k M G T')
    return int(float(match.group(1)) * _FACTORS[match.group(2)])


def _pre_stop(spec: dict[str, Any], grace: int, where: str) -> int:
    """lifecycle.preStop.sleep.seconds (the only lifecycle hook mapped); within the grace
    period, as the kubelet counts it."""
    lifecycle = spec.get("lifecycle")
    if not lifecycle:
        return 0
    _unknown(lifecycle, {"preStop"}, f"{where} lifecycle")
    _unknown(lifecycle["preStop"], {"sleep"}, f"{where} lifecycle.preStop")
    seconds = int(lifecycle["preStop"]["sleep"]["seconds"])
    if not 0 <= seconds <= grace:
        raise InvalidInputError(f"preStop sleeps {seconds}s, beyond the {grace}s grace period",
                                where=f"{where} lifecycle.preStop.sleep.seconds",
                                accepted=f"0..{grace}")
    return seconds


def _probe(spec: dict[str, Any] | None, ports: dict[str, int], where: str) -> Probe | None:
    if spec is None:
        return None
    _unknown(spec, PROBE_FIELDS, where)
    http = spec.get("httpGet")
    if http is None:
        raise UnsupportedFieldError("only httpGet probes are mapped", where=where,
                                    accepted="httpGet")
    port = http["port"]
    if isinstance(port, str):
        if port not in ports:
            raise InvalidInputError(f"probe port {port!r} is not a named container port",
                                    where=where, accepted=", ".join(sorted(ports)))
        port = ports[port]
    return Probe(path=http.get("path", "/"), port=int(port),
                 period=float(spec.get("periodSeconds", 10)),
                 failure_threshold=int(spec.get("failureThreshold", 3)),
                 success_threshold=int(spec.get("successThreshold", 1)),
                 initial_delay=float(spec.get("initialDelaySeconds", 0)),
                 timeout=float(spec.get("timeoutSeconds", 1)))


def container_run(pod_spec: dict[str, Any], *, name: str, network: str,
                  container: str | None = None, image: str | None = None,
                  termination_log: str | None = None, labels: dict[str, str] | None = None,
                  ulimits: tuple[str, ...] = (), extra_env: dict[str, str] | None = None,
                  seccomp_profile: str | None = None) -> ContainerRun:
    """The `podman run` of one container of `pod_spec` (a Deployment's or Job's
    `spec.template.spec`). `image` overrides the spec's image reference (a locally built
    one); `termination_log` is the host file to mount at the termination message path."""
    _unknown(pod_spec, POD_FIELDS, "pod spec")
    containers = pod_spec["containers"]
    spec = next((c for c in containers if container in (None, c["name"])), None)
    if spec is None:
        raise InvalidInputError(f"no container {container!r} in the pod spec", where="pod spec",
                                accepted=", ".join(c["name"] for c in containers))
    where = f"container {spec['name']}"
    _unknown(spec, CONTAINER_FIELDS, where)
    args: list[str] = ["--name", name, "--hostname", name[:63], "--network", network,
                       "--pull=never", *ulimits]
    user, security = _security(pod_spec, spec, where, seccomp_profile)
    args += security
    writable, mounts = _volumes(pod_spec, spec, where)
    args += mounts
    message_path = spec.get("terminationMessagePath", TERMINATION_LOG)
    policy = spec.get("terminationMessagePolicy", "File")
    if policy not in ("File", "FallbackToLogsOnError"):
        raise InvalidInputError(f"terminationMessagePolicy {policy!r}", where=where,
                                accepted="File, FallbackToLogsOnError")
    if termination_log:
        args += ["--mount", f"type=bind,source={termination_log},destination={message_path}"]
    args += _resources(spec, where)
    env = _env(spec, where)
    env.update(extra_env or {})
    for key, value in env.items():
        args += ["--env", f"{key}={value}"]
    ports: dict[str, int] = {}
    for port in spec.get("ports", []):
        _unknown(port, {"name", "containerPort", "protocol"}, f"{where} port")
        ports[port.get("name", str(port["containerPort"]))] = int(port["containerPort"])
    grace = int(pod_spec.get("terminationGracePeriodSeconds", 30))
    args += ["--stop-timeout", str(grace)]
    for key, value in sorted((labels or {}).items()):
        args += ["--label", f"{key}={value}"]
    if "command" in spec:
        args += ["--entrypoint", _json_list(spec["command"])]
    args.append(image or spec["image"])
    args += [str(a) for a in spec.get("args", [])]
    return ContainerRun(
        name=name, image=image or spec["image"], args=tuple(args), user=user, ports=ports,
        env=env, writable=tuple(writable), grace_seconds=grace,
        readiness=_probe(spec.get("readinessProbe"), ports, f"{where} readinessProbe"),
        liveness=_probe(spec.get("livenessProbe"), ports, f"{where} livenessProbe"),
        startup=_probe(spec.get("startupProbe"), ports, f"{where} startupProbe"),
        termination_message_path=message_path,
        fallback_to_logs=policy == "FallbackToLogsOnError", labels=dict(labels or {}),
        pre_stop_seconds=_pre_stop(spec, grace, where))


def _security(pod_spec: dict[str, Any], spec: dict[str, Any], where: str,
              seccomp_profile: str | None) -> tuple[int, list[str]]:
    pod_sec = pod_spec.get("securityContext", {})
    _unknown(pod_sec, POD_SECURITY, "pod securityContext")
    sec = spec.get("securityContext", {})
    _unknown(sec, CONTAINER_SECURITY, f"{where} securityContext")
    caps = sec.get("capabilities", {})
    _unknown(caps, {"drop", "add"}, f"{where} capabilities")
    user = int(sec.get("runAsUser", pod_sec.get("runAsUser", -1)))
    group = int(sec.get("runAsGroup", pod_sec.get("runAsGroup", user)))
    if sec.get("runAsNonRoot", pod_sec.get("runAsNonRoot", False)) and user == 0:
        raise InvalidInputError("runAsNonRoot is set but runAsUser is 0", where=where,
                                accepted="a non-zero runAsUser")
    args: list[str] = []
    if user >= 0:
        args += ["--user", f"{user}:{group if group >= 0 else user}"]
    if "fsGroup" in pod_sec:
        args += ["--group-add", str(int(pod_sec["fsGroup"]))]
    if sec.get("readOnlyRootFilesystem"):
        args += ["--read-only", "--read-only-tmpfs=false"]
    for cap in caps.get("drop", []):
        args += ["--cap-drop", cap.lower()]
    for cap in caps.get("add", []):
        args += ["--cap-add", cap.lower()]
    if sec.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    seccomp = sec.get("seccompProfile", pod_sec.get("seccompProfile", {}))
    _unknown(seccomp, {"type"}, f"{where} seccompProfile")
    if seccomp.get("type") not in (None, "RuntimeDefault"):
        raise UnsupportedFieldError(f"seccompProfile {seccomp.get('type')!r} is not mapped",
                                    where=where, accepted="RuntimeDefault")
    if seccomp_profile:  # podman's default is RuntimeDefault; say it explicitly if known
        args += ["--security-opt", f"seccomp={seccomp_profile}"]
    return user, args


def _volumes(pod_spec: dict[str, Any], spec: dict[str, Any],
             where: str) -> tuple[list[str], list[str]]:
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    writable: list[str] = []
    args: list[str] = []
    for mount in spec.get("volumeMounts", []):
        _unknown(mount, {"name", "mountPath", "readOnly"}, f"{where} volumeMount")
        vol = volumes.get(mount["name"])
        if vol is None:
            raise InvalidInputError(f"volumeMount {mount['name']!r} names no volume",
                                    where=where, accepted=", ".join(sorted(volumes)))
        _unknown(vol, {"name", "emptyDir"}, f"volume {vol['name']}")
        empty = vol["emptyDir"] or {}
        _unknown(empty, {"sizeLimit", "medium"}, f"volume {vol['name']} emptyDir")
        opts = f"type=tmpfs,destination={mount['mountPath']},tmpfs-mode=0777"
        if "sizeLimit" in empty:
            opts += f",tmpfs-size={memory_bytes(empty['sizeLimit'])}"
        if mount.get("readOnly"):
            opts += ",ro=true"
        else:
            writable.append(mount["mountPath"])
        args += ["--mount", opts]
    return writable, args


def _resources(spec: dict[str, Any], where: str) -> list[str]:
    resources = spec.get("resources", {})
    _unknown(resources, {"limits", "requests"}, f"{where} resources")
    limits = resources.get("limits", {})
    _unknown(limits, {"cpu", "memory"}, f"{where} resources.limits")
    args: list[str] = []
    if "cpu" in limits:
        args += ["--cpus", f"{cpus(limits['cpu']):g}"]
    if "memory" in limits:
        args += ["--memory", str(memory_bytes(limits["memory"]))]
    return args


def _env(spec: dict[str, Any], where: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in spec.get("env", []):
        if "value" not in item:
            raise UnsupportedFieldError("only literal env values are mapped",
                                        where=f"{where} env {item.get('name')}",
                                        accepted="value")
        env[item["name"]] = str(item["value"])
    return env


def _json_list(items: list[str]) -> str:
    import json

    return json.dumps([str(i) for i in items])
