"""`pulumi up` for real: the Pulumi CLI and the Kubernetes provider against a cluster.

The stacks' program (program.py) runs inline through Pulumi's Automation API: the real
`pulumi` CLI (built by scripts/upstream/build.sh, v3.274) plans and applies with the real
`pulumi-resource-kubernetes` provider (4.25.0, the Python SDK's version), reading
Pulumi.yaml and Pulumi.<stack>.yaml from the project folder, unchanged. Inline, because the
CLI's Python language host (`pulumi-language-python`) is a Go module the module proxy does
not serve; everything else is the path `pulumi up` takes.

Offline and local: a file backend (`file://<state>`), an empty passphrase for the stack's
secrets, no update checks, no plugin downloads (the provider is found on PATH), the
cluster named by a kubeconfig. Every operation returns Pulumi's own summary.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelrail.errors import InvalidInputError, ModelrailError
from modelrail.exit_codes import ExitCode

PROJECT = "modelrail"


class DeployError(ModelrailError):
    """The Pulumi CLI or the provider failed; the message carries Pulumi's own output."""

    exit_code = ExitCode.FAILURE


@dataclass(frozen=True)
class Target:
    project: Path  # Pulumi.yaml and Pulumi.<stack>.yaml
    stack: str
    kubeconfig: Path
    backend: Path  # the file backend's folder

    def env(self) -> dict[str, str]:
        from modelrail.cluster.config import upstream_bin

        upstream = upstream_bin()  # the pulumi CLI and provider scripts/upstream built
        self.backend.mkdir(parents=True, exist_ok=True)
        return {
            "PULUMI_BACKEND_URL": f"file://{self.backend.resolve()}",
            "PULUMI_CONFIG_PASSPHRASE": "",
            "PULUMI_HOME": str((self.backend / ".pulumi-home").resolve()),
            "PULUMI_SKIP_UPDATE_CHECK": "true",
            "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
            "PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK": "true",
            "KUBECONFIG": str(self.kubeconfig.resolve()),
            "PATH": f"{upstream}:{os.environ.get('PATH', '')}",
        }


def _check(target: Target) -> None:
    from modelrail.infra.config import load_stack

    if not (target.project / "Pulumi.yaml").is_file():
        raise InvalidInputError("no Pulumi.yaml", where=str(target.project),
                                accepted="the modelrail project folder (--project)")
    if not target.kubeconfig.is_file():
        raise InvalidInputError("no kubeconfig", where=str(target.kubeconfig),
                                accepted="the cluster's kubeconfig (modelrail cluster status)")
    # the whole stack file is validated before Pulumi starts: nothing is created for a bad one
    load_stack(target.stack, target.project)


def _program() -> None:
    import pulumi

    from modelrail.infra.config import from_pulumi
    from modelrail.infra.program import build

    build(from_pulumi(pulumi.get_stack()))


def _work_dir(target: Target) -> Path:
    """Pulumi.yaml (without `main`) and a copy of Pulumi.<stack>.yaml beside the backend:
    the CLI writes
    into a stack file (its secrets' salt, re-quoted values), the project's stay as they
    are. Refreshed from the project on every run, the salt kept."""
    import yaml

    work = target.backend / "project"
    work.mkdir(parents=True, exist_ok=True)
    project = yaml.safe_load((target.project / "Pulumi.yaml").read_text())
    project.pop("main", None)  # the program runs inline, from this process
    (work / "Pulumi.yaml").write_text(yaml.safe_dump(project, sort_keys=False))
    source = target.project / f"Pulumi.{target.stack}.yaml"
    dest = work / source.name
    salt = ""
    if dest.is_file():
        salt = next((line for line in dest.read_text().splitlines()
                     if line.startswith("encryptionsalt:")), "")
    text = source.read_text()
    dest.write_text(text + (f"\n{salt}\n" if salt and "encryptionsalt:" not in text else ""))
    return work


def stack(target: Target) -> Any:
    """The stack, created in the backend on first use; its config is Pulumi.<stack>.yaml."""
    from pulumi import automation as auto

    _check(target)
    env = target.env()
    os.environ.update({k: v for k, v in env.items() if k != "PATH"})
    os.environ["PATH"] = env["PATH"]
    opts = auto.LocalWorkspaceOptions(work_dir=str(_work_dir(target)), env_vars=env,
                                      pulumi_home=env["PULUMI_HOME"])
    try:
        return auto.create_or_select_stack(stack_name=target.stack, project_name=PROJECT,
                                           program=_program, opts=opts)
    except auto.errors.CommandError as exc:
        raise DeployError(f"pulumi could not open stack {target.stack}: {exc}") from None


def _run(what: str, fn: Callable[[], Any]) -> Any:
    from pulumi import automation as auto

    try:
        return fn()
    except auto.errors.CommandError as exc:
        raise DeployError(f"pulumi {what} failed:\n{str(exc)[-4000:]}") from None


def up(target: Target, *, on_output: Callable[[str], None] | None = None) -> dict[str, Any]:
    s = stack(target)
    result = _run("up", lambda: s.up(on_output=on_output, color="never"))
    return {"summary": result.summary.resource_changes or {},
            "outputs": {k: v.value for k, v in result.outputs.items()}}


def preview(target: Target, *, expect_no_changes: bool = False,
            on_output: Callable[[str], None] | None = None) -> dict[str, int]:
    s = stack(target)
    result = _run("preview", lambda: s.preview(on_output=on_output, color="never",
                                               expect_no_changes=expect_no_changes))
    return dict(result.change_summary or {})


def refresh(target: Target, *, on_output: Callable[[str], None] | None = None,
            ) -> dict[str, int]:
    s = stack(target)
    result = _run("refresh", lambda: s.refresh(on_output=on_output, color="never"))
    return dict(result.summary.resource_changes or {})


def destroy(target: Target, *, on_output: Callable[[str], None] | None = None,
            ) -> dict[str, int]:
    s = stack(target)
    result = _run("destroy", lambda: s.destroy(on_output=on_output, color="never"))
    return dict(result.summary.resource_changes or {})
