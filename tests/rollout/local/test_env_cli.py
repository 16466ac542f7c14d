"""The CLI a CI job uses, end to end on real local environments: `env up|status|down` and
`rollout start|status|promote|abort|history|report`, with their exit codes; a controller
killed mid-rollout and an instance killed mid-rollout lose nothing; autoscaling follows a
load ramp up and back down."""

from __future__ import annotations

import json
import os
import signal
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from modelrail.processes import pid_alive
from modelrail.rollout.load.client import ClientTraffic
from modelrail.rollout.load.locust import run_load
from tests.conftest import Example
from tests.rollout.envs import cli, env_info, local_env, write_stack

pytestmark = pytest.mark.slow
BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4],
                    "data": [5.1, 3.5, 1.4, 0.2]}]}
FAST = ("--step-seconds", "5", "--steps", "25,50,100")


def _traffic(info: dict[str, object]) -> ClientTraffic:
    return ClientTraffic(f"{info['http']}/v2/models/iris/infer", BODY, pause=0.01,
                         max_seconds=240).start()


def _wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _status(state: Path, env: str) -> dict[str, object]:
    out = cli("rollout", "status", "--env", env, "-o", "json", state_dir=state)
    data: dict[str, object] = json.loads(out.stdout)
    return data


def test_ci_flow_promotes_with_zero_failed_requests(examples: dict[str, Example],
                                                     tmp_path: Path) -> None:
    project, state = tmp_path / "project", tmp_path / "state"
    write_stack(project, "ci")
    early = cli("rollout", "start", "--env", "ci", "--model", "iris:2", state_dir=state)
    assert early.returncode == 12 and "modelrail env up ci" in early.stderr, early.stderr
    with local_env(project, state, "ci") as info:
        status = cli("env", "status", "ci", "-o", "json", state_dir=state)
        assert status.returncode == 0 and json.loads(status.stdout)["phase"] == "Ready"
        for args, needle in ((("--model", "iris:99"), "versions of iris: 1, 2, 3"),
                             (("--model", "iris:1"), "already the stable version"),
                             (("--model", "iris:2", "--steps", "50,10"), "not strictly increasing"),
                             (("--model", "iris:2", "--step-seconds", "1"), "step_seconds"),
                             (("--model", "wine:1"), "not served in environment ci")):
            bad = cli("rollout", "start", "--env", "ci", *args, state_dir=state)
            assert bad.returncode == 2 and needle in bad.stderr, (args, bad.stderr)
        traffic = _traffic(info)
        run = cli("rollout", "start", "--env", "ci", "--model", "iris:2", "--wait", *FAST,
                  "-o", "json", state_dir=state)
        results = traffic.stop()
        assert run.returncode == 0, run.stdout + run.stderr
        summary = json.loads(run.stdout)
        assert summary["phase"] == "Succeeded" and summary["exit_code"] == 0
        assert set(results) == {200} and results[200] > 200, results  # zero failed
        assert env_info(state, "ci")["models"]["iris"]["stable"] == "iris:2"
        # OIP over gRPC and REST through the proxy now reach the promoted version
        rows = examples["iris:2"].split.X_test.tolist()
        grpc = run_load(protocol="grpc", target=info["grpc"]["iris"], model="iris",
                        rows=rows, users=1, seconds=2)
        rest = run_load(protocol="rest", target=info["http"], model="iris", rows=rows,
                        users=1, seconds=2)
        for r in (grpc, rest):
            assert r.sample.requests > 0 and r.sample.failures == 0, r.output_tail
        # the audit trail: every decision with versions, sha256, weights and evidence
        hist = json.loads(cli("rollout", "history", "--env", "ci", "-o", "json",
                              state_dir=state).stdout)
        # each weight decided once (re-issued while the proxy had not applied it yet)
        assert [e["weight"] for e in hist
                if e["action"] == "set_weight" and not e["reissued"]] == [25, 50, 100]
        assert hist[-1]["to"] == "Succeeded"
        assert hist[-1]["canary"]["sha256"] == examples["iris:2"].card.sha256
        assert hist[-1]["stable"]["sha256"] == examples["iris:1"].card.sha256
        analysed = [e for e in hist if e["measurements"]]
        assert analysed and all(e["measurements"]["load"]["requests"] > 0 for e in analysed)
        text = cli("rollout", "history", "--env", "ci", state_dir=state).stdout
        assert "Promoting->Succeeded" in text and "sha256 " in text
        # the report: self-contained HTML with the charts
        out = tmp_path / "report.html"
        assert cli("rollout", "report", "--env", "ci", "--out", str(out),
                   state_dir=state).returncode == 0
        _check_report(out.read_text())
        pids = [i["pid"] for t in json.loads((state / "ci" / "plane.json").read_text())
                ["tracks"] for i in t["instances"]]
    assert not any(pid_alive(p) for p in pids)  # env down stopped every instance
    assert cli("env", "status", "ci", state_dir=state).returncode == 12


def _check_report(html: str) -> None:
    found: dict[str, int] = {}

    class Parser(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found[tag] = found.get(tag, 0) + 1
            for name, value in attrs:
                assert not (name in ("src", "href") and value), (tag, name, value)

    Parser().feed(html)
    assert found.get("svg") == 5 and found.get("polyline", 0) >= 5, found
    assert "script" not in found and "link" not in found  # viewable offline
    for title in ("canary weight", "request rate", "error rate", "p99 latency", "model gate"):
        assert title in html


def test_bad_canary_exits_9_and_abort_exits_11(examples: dict[str, Example],
                                              tmp_path: Path) -> None:
    project, state = tmp_path / "project", tmp_path / "state"
    write_stack(project, "ci2")
    with local_env(project, state, "ci2") as info:
        traffic = _traffic(info)
        wrong = cli("rollout", "start", "--env", "ci2", "--model", "iris:3", "--wait", *FAST,
                    state_dir=state)
        assert wrong.returncode == 9, wrong.stdout + wrong.stderr
        assert "ROLLED BACK" in wrong.stdout and "model gate: FAIL" in wrong.stdout
        # caught by the pre-traffic analysis: no user request ever reached the canary
        assert "pre-traffic analysis failed" in wrong.stdout
        hist = json.loads(cli("rollout", "history", "--env", "ci2", "-o", "json",
                              state_dir=state).stdout)
        assert not [e for e in hist if e["action"] == "set_weight"], hist
        started = cli("rollout", "start", "--env", "ci2", "--model", "iris:2",
                      "--step-seconds", "60", state_dir=state)
        assert started.returncode == 0, started.stderr
        _wait_for(lambda: _status(state, "ci2")["phase"] == "Progressing", 60, "progress")
        promote = cli("rollout", "promote", "--env", "ci2", state_dir=state)
        assert promote.returncode == 2 and "not paused at a manual gate" in promote.stderr
        assert cli("rollout", "abort", "--env", "ci2", "--model", "iris",
                   state_dir=state).returncode == 0
        watch = cli("rollout", "status", "--env", "ci2", "--watch", state_dir=state)
        assert watch.returncode == 11 and "ABORTED" in watch.stdout, watch.stdout
        results = traffic.stop()
        # the verdict is given once the rollback is carried out; env.json follows within 1 s
        _wait_for(lambda: env_info(state, "ci2")["models"]["iris"] == {
            "stable": "iris:1", "stable_instances": 1, "canary": None, "canary_instances": 0,
            "canary_weight": 0}, 5, "env.json to show the canary gone")
        # the bad canary got a share of real traffic for one interval at most; the wrong
        # answers are not failed requests, so the clients saw none fail
        assert set(results) == {200}, results


def test_instance_and_controller_killed_mid_rollout_lose_nothing(
        examples: dict[str, Example], tmp_path: Path) -> None:
    project, state = tmp_path / "project", tmp_path / "state"
    write_stack(project, "ci3", autoscaling={
        "minReplicas": 2, "maxReplicas": 2, "targetCpuUtilization": 70,
        "scaleUpStabilizationSeconds": 0, "scaleDownStabilizationSeconds": 60})
    with local_env(project, state, "ci3") as info:
        traffic = _traffic(info)
        assert cli("rollout", "start", "--env", "ci3", "--model", "iris:2", "--step-seconds",
                   "8", "--steps", "25,50,100", state_dir=state).returncode == 0
        _wait_for(lambda: _status(state, "ci3")["weight"] == 25, 60, "step 1")
        # an instance dies (SIGKILL, its whole process group): the supervisor replaces it
        victim = json.loads((state / "ci3" / "plane.json").read_text())
        stable = next(t for t in victim["tracks"] if t["track"] == "stable")
        killed_at = time.monotonic()
        os.killpg(stable["instances"][0]["pid"], signal.SIGKILL)
        _wait_for(lambda: "supervisor: restarted" in (state / "ci3" / "controller.log"
                                                      ).read_text(), 30, "the supervisor")
        # the controller dies (SIGKILL) at step 2; the data plane keeps serving
        _wait_for(lambda: _status(state, "ci3")["weight"] == 50, 90, "step 2")
        os.kill(env_info(state, "ci3")["pid"], signal.SIGKILL)
        time.sleep(3)
        assert cli("env", "status", "ci3", state_dir=state).returncode == 12
        before = traffic.total
        time.sleep(2)
        assert traffic.total > before  # still served with no controller
        again = cli("env", "up", "ci3", "--project", str(project), state_dir=state)
        assert again.returncode == 0, again.stderr
        watch = cli("rollout", "status", "--env", "ci3", "--watch", "--timeout", "180",
                    state_dir=state)
        results = traffic.stop()
        assert watch.returncode == 0, watch.stdout
        assert results[200] > 300, results
        # a crash loses only what the killed instance had in flight: Traefik's retry
        # middleware replays a request it could not deliver, never one an instance had
        # received (its documented rule: POST bodies are not replayed), so at most one
        # request per client thread, sent as the instance died, may come back 502
        lost = traffic.failures
        assert len(lost) <= 1 and all(
            outcome == 502 and abs(sent - killed_at) < 1.0 for sent, outcome in lost
        ), (lost, killed_at, results)
        status = json.loads((next((state / "ci3" / "rollouts").iterdir()) / "status.json"
                             ).read_text())
        history = status["status"]["history"]
        actions = [(h["action"], h["weight"]) for h in history
                   if h["action"] not in ("hold", "complete")]
        # each action exactly once and in order: none repeated, none lost
        assert actions == [("set_weight", 25), ("set_weight", 50), ("set_weight", 100),
                           ("promote", 100)], actions
        assert [h["seq"] for h in history if h["action"] != "complete"] == [1, 2, 3, 4]
        assert status["executed_seq"] == status["status"]["seq"]
        log = (state / "ci3" / "controller.log").read_text()
        assert "adopted the running environment" in log


def test_autoscaling_follows_a_load_ramp_up_and_down(examples: dict[str, Example],
                                                     tmp_path: Path) -> None:
    project, state = tmp_path / "project", tmp_path / "state"
    write_stack(project, "ci4", autoscaling={
        "minReplicas": 1, "maxReplicas": 3, "targetCpuUtilization": 70,
        "scaleUpStabilizationSeconds": 0, "scaleDownStabilizationSeconds": 5})
    # 40 ms per request makes in-flight requests follow the number of clients
    faults = {"MODELRAIL_FAULTS": json.dumps({"iris:1": {"latency_ms": 40}})}
    with local_env(project, state, "ci4", "--target-in-flight", "1",
                   extra_env=faults) as info:
        def replicas() -> int:
            return int(env_info(state, "ci4")["models"]["iris"]["stable_instances"])

        assert replicas() == 1
        ramp = ClientTraffic(f"{info['http']}/v2/models/iris/infer", BODY, threads=6,
                             pause=0.0, max_seconds=90).start()
        try:
            _wait_for(lambda: replicas() >= 2, 60, "scale-up under load")
        finally:
            results = ramp.stop()
        assert set(results) == {200}, results  # scaling up lost nothing
        _wait_for(lambda: replicas() == 1, 60, "scale-down after the load")
        events = [json.loads(line) for line in
                  (state / "ci4" / "scaling.jsonl").read_text().splitlines()]
        assert events[0]["to"] > events[0]["from"] and events[0]["metric"] > 1
        assert events[-1]["to"] == 1 and events[-1]["to"] < events[-1]["from"]
        assert max(e["to"] for e in events) <= 3


def test_container_runtime_promotes_a_good_version_and_rolls_a_bad_one_back(
        examples: dict[str, Example], tmp_path: Path) -> None:
    """The same environment, controller and rollouts, with every instance a container of
    the real inference image run as the stack's Deployment says (podman+runc)."""
    from modelrail.images import podman

    project, state = tmp_path / "project", tmp_path / "state"
    write_stack(project, "ct")
    with local_env(project, state, "ct", "--runtime", "container") as info:
        plane = json.loads((state / "ct" / "plane.json").read_text())
        assert plane["runtime"]["kind"] == "container"
        [inst] = [i for t in plane["tracks"] for i in t["instances"]]
        container = podman.inspect_container(inst["container"])
        assert container is not None and container["State"]["Running"]
        assert container["Config"]["User"] == "1034:1034"
        assert container["HostConfig"]["ReadonlyRootfs"] is True
        assert inst["host"].startswith(podman.NETWORK_SUBNET.rsplit(".", 1)[0])
        traffic = _traffic(info)
        good = cli("rollout", "start", "--env", "ct", "--model", "iris:2", "--wait", *FAST,
                   "-o", "json", state_dir=state)
        results = traffic.stop()
        assert good.returncode == 0, good.stdout + good.stderr
        assert set(results) == {200} and results[200] > 100, results  # zero failed
        assert env_info(state, "ct")["models"]["iris"]["stable"] == "iris:2"
        bad = cli("rollout", "start", "--env", "ct", "--model", "iris:3", "--wait", *FAST,
                  "-o", "json", state_dir=state)
        assert bad.returncode == 9, bad.stdout + bad.stderr
        assert json.loads(bad.stdout)["phase"] == "RolledBack"
        assert env_info(state, "ct")["models"]["iris"]["stable"] == "iris:2"
        names = [i["container"] for t in json.loads((state / "ct" / "plane.json").read_text())
                 ["tracks"] for i in t["instances"]]
    for name in [inst["container"], *names]:  # env down removed every container
        assert podman.inspect_container(name) is None


def test_header_requests_reach_the_canary_at_weight_0_and_are_analysed_apart(
        examples: dict[str, Example], tmp_path: Path) -> None:
    """The stack's headerRoute on a local environment: once the canary is ready, at weight
    0, a client sending the header reaches it through Traefik and one without never does;
    the header's requests are measured apart from the split (the audit's `header`
    measurements and the `header traffic` check) and turned back to stable at the end."""
    import httpx
    import yaml

    from tests.rollout.envs import ROOT

    project, state = tmp_path / "project", tmp_path / "state"
    policy = yaml.safe_load((ROOT / "Pulumi.dev.yaml").read_text())["config"][
        "modelrail:rollout"]
    header = {"x-model-cohort": "canary"}
    write_stack(project, "ci6", rollout={**policy, "headerRoute": {
        "name": "x-model-cohort", "value": "canary"}})
    with local_env(project, state, "ci6") as info:
        url = f"{info['http']}/v2/models/iris/infer"

        def version(headers: dict[str, str]) -> str:
            r = httpx.post(url, json=BODY, headers=headers, timeout=10)
            assert r.status_code == 200, r.text
            return str(r.json()["model_version"])

        cohort = ClientTraffic(url, BODY, headers=header, pause=0.02, max_seconds=240)
        assert cli("rollout", "start", "--env", "ci6", "--model", "iris:2", *FAST,
                   state_dir=state).returncode == 0
        with_header: dict[str, int] = {}
        without: dict[str, int] = {}
        deadline = time.monotonic() + 120
        while with_header.get("2", 0) < 10:
            assert time.monotonic() < deadline, (with_header, without, _status(state, "ci6"))
            if _status(state, "ci6")["weight"] != 0:
                break
            a, b = version(header), version({})
            if _status(state, "ci6")["weight"] == 0:
                with_header[a] = with_header.get(a, 0) + 1
                without[b] = without.get(b, 0) + 1
        assert with_header.get("2", 0) > 0 and set(without) == {"1"}, (with_header, without)
        cohort.start()
        watch = cli("rollout", "status", "--env", "ci6", "--watch", "--timeout", "180",
                    state_dir=state)
        results = cohort.stop()
        assert watch.returncode == 0, watch.stdout + watch.stderr
        assert set(results) == {200}, results
        hist = json.loads(cli("rollout", "history", "--env", "ci6", "-o", "json",
                              state_dir=state).stdout)
        measured = [e["measurements"]["header"] for e in hist
                    if e["measurements"] and e["measurements"].get("header")]
        assert sum(h["requests"] for h in measured) > 20, measured
        checks = [c for e in hist for c in e["checks"] if c["name"] == "header traffic"]
        assert checks and all(c["status"] == "PASS" for c in checks), checks
        assert any("requests, error rate" in c["detail"] for c in checks), checks
        # promoted: the header means nothing any more, everyone is on iris:2
        assert {version(header) for _ in range(5)} == {version({}) for _ in range(5)} == {"2"}
