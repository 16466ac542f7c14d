"""The Pulumi program under Pulumi's mock runtime, for each of the three stacks: the full
resource set, what each resource carries, parenting, and config errors stopping it before
any resource is declared."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from modelrail.errors import InvalidInputError
from modelrail.infra.components import resource_name
from modelrail.infra.config import load_stack
from modelrail.infra.manifests import render
from tests.infra.harness import ROOT, run_program, stack_values

STACKS = ("dev", "staging", "prod")


def expected_types(n_models: int) -> Counter[str]:
    return Counter({
        "modelrail:infra:Environment": 1, "modelrail:infra:RolloutController": 1,
        "modelrail:infra:ModelDeployment": n_models,
        "kubernetes:core/v1:Namespace": 1, "kubernetes:core/v1:ResourceQuota": 1,
        "kubernetes:core/v1:LimitRange": 1,
        "kubernetes:networking.k8s.io/v1:NetworkPolicy": 5,
        "kubernetes:core/v1:ServiceAccount": 3,
        "kubernetes:rbac.authorization.k8s.io/v1:Role": 2,
        "kubernetes:rbac.authorization.k8s.io/v1:RoleBinding": 2,
        "kubernetes:apiextensions.k8s.io/v1:CustomResourceDefinition": 2,
        "kubernetes:kopf.dev/v1:KopfPeering": 1,
        "kubernetes:apps/v1:Deployment": 1 + n_models,
        "kubernetes:core/v1:Service": 2 * n_models,
        "kubernetes:autoscaling/v2:HorizontalPodAutoscaler": n_models,
        "kubernetes:policy/v1:PodDisruptionBudget": n_models,
        "kubernetes:gateway.networking.k8s.io/v1:HTTPRoute": n_models,
        "kubernetes:gateway.networking.k8s.io/v1:GRPCRoute": n_models,
        "kubernetes:modelrail.dev/v1alpha1:ModelRollout": n_models,
    })


@pytest.mark.parametrize("stack", STACKS)
def test_full_resource_set(stack: str) -> None:
    cfg = load_stack(stack, ROOT)
    recorder, urns = run_program(stack, stack_values(stack))
    types = Counter(r.typ for r in recorder.resources)
    assert types == expected_types(len(cfg.models))
    # every Kubernetes resource carries exactly what the shared builders produce
    declared = {r.name: r for r in recorder.resources if r.typ.startswith("kubernetes:")}
    rendered = {resource_name(o): o for o in render(cfg)}
    assert declared.keys() == rendered.keys()
    for name, obj in rendered.items():
        inputs = declared[name].inputs
        for key, value in obj.items():
            assert inputs[key] == value, (name, key)
    # model children are parented to their ModelDeployment component
    for m in cfg.models:
        urn = urns[f"{cfg.namespace}-deployment-{m.name}-stable"]
        assert "modelrail:infra:ModelDeployment$kubernetes:apps/v1:Deployment" in urn


def test_stacks_differ_in_sizing_as_configured() -> None:
    dev = run_program("dev", stack_values("dev"))[0]
    prod = run_program("prod", stack_values("prod"))[0]

    def hpa(rec: object) -> dict[str, int]:
        r = next(x for x in rec.resources  # type: ignore[attr-defined]
                 if x.typ.endswith("HorizontalPodAutoscaler") and "iris" in x.name)
        return {"min": r.inputs["spec"]["minReplicas"], "max": r.inputs["spec"]["maxReplicas"]}

    assert hpa(dev) == {"min": 1, "max": 3} and hpa(prod) == {"min": 3, "max": 20}


@pytest.mark.parametrize("mutate,fragment", [
    (lambda v: v.pop("modelrail:image"), "key modelrail:image: Field required (value: missing)"),
    (lambda v: v.__setitem__("modelrail:workers", "many"),
     "key modelrail:workers: Input should be a valid integer"),
    (lambda v: v.__setitem__("modelrail:autoscaling", '{"minReplicas": 5, "maxReplicas": 2, '
                             '"targetCpuUtilization": 70, "scaleUpStabilizationSeconds": 0, '
                             '"scaleDownStabilizationSeconds": 60}'),
     "minReplicas (5) is above maxReplicas (2)"),
    (lambda v: v.__setitem__("modelrail:quota", '{"cpu": "4", "memory": "lots", "pods": 3}'),
     "key modelrail:quota.memory: must be a Kubernetes quantity"),
    (lambda v: v.__setitem__("modelrail:image", "registry.example.com/inference:latest"),
     "':latest' is not reproducible"),
    (lambda v: v.__setitem__("modelrail:replicas", "3"),
     "key modelrail:replicas: Extra inputs are not permitted"),
])
def test_config_errors_stop_the_program_before_any_resource(mutate, fragment) -> None:  # type: ignore[no-untyped-def]
    values = stack_values("staging")
    mutate(values)
    with pytest.raises(InvalidInputError) as info:
        run_program("staging", values)
    message = str(info.value)
    assert fragment in message and "stack staging" in message and "accepted:" in message


def test_program_declares_nothing_on_bad_config() -> None:
    import pulumi

    from tests.infra.harness import Recorder

    values = stack_values("dev")
    values["modelrail:rollout"] = values["modelrail:rollout"].replace('"steps": [25, 50, 100]',
                                                                      '"steps": [50, 25, 100]')
    recorder = Recorder()
    pulumi.runtime.set_mocks(recorder, project="modelrail", stack="dev", preview=False)
    pulumi.runtime.set_all_config(values)
    from modelrail.infra import program

    with pytest.raises(InvalidInputError, match=r"steps \[50, 25, 100\] are not strictly"):
        program.main()
    assert recorder.resources == []


def test_infra_main_is_the_thin_entry_point() -> None:
    text = (Path(ROOT) / "infra" / "__main__.py").read_text()
    assert "from modelrail.infra.program import main" in text and "main()" in text


def test_controller_install_owns_its_account_and_rbac() -> None:
    _, urns = run_program("dev", stack_values("dev"))
    # urns only cover model children; check the builders' grouping instead
    from modelrail.infra import manifests

    cfg = load_stack("dev", ROOT)
    kinds = [(o["kind"], o["metadata"]["name"]) for o in manifests.controller(cfg)]
    assert kinds == [("CustomResourceDefinition", "modelrollouts.modelrail.dev"),
                     ("CustomResourceDefinition", "kopfpeerings.kopf.dev"),
                     ("KopfPeering", "modelrail-controller"),
                     ("ServiceAccount", "modelrail-controller"),
                     ("Role", "modelrail-controller"), ("RoleBinding", "modelrail-controller"),
                     ("Deployment", "modelrail-controller")]
    assert urns  # the program ran


def test_the_gateway_is_read_not_owned() -> None:
    recorder, _ = run_program("dev", stack_values("dev"))
    assert [(r.typ, r.name) for r in recorder.reads] == [
        ("kubernetes:gateway.networking.k8s.io/v1:Gateway", "gateway")]
    assert not any(r.typ.endswith(":Gateway") for r in recorder.resources)


def test_outputs_point_at_the_gateways_listeners() -> None:
    from modelrail.infra.program import gateway_output, model_outputs
    from tests.infra.harness import GATEWAY_STATE

    cfg = load_stack("dev", ROOT)
    spec, status = GATEWAY_STATE["spec"], GATEWAY_STATE["status"]
    iris = model_outputs(cfg, spec)["iris"]
    assert iris["http"] == "http://iris.models.dev.example.com:8000/v2/models/iris"
    assert iris["grpc"] == "iris.models.dev.example.com:8001" and not iris["grpc_tls"]
    # the engine hands numbers back as floats
    as_engine = {"listeners": [{**lis, "port": float(lis["port"])} for lis in spec["listeners"]]}
    assert model_outputs(cfg, as_engine)["iris"] == model_outputs(cfg, spec)["iris"]
    assert gateway_output(cfg, as_engine, status) == {
        "name": "modelrail-gateway", "namespace": "gateway-system",
        "addresses": ["10.96.0.80"], "http": "10.96.0.80:8000", "grpc": "10.96.0.80:8001"}
    # a TLS gateway on the default port: https URLs without a port, gRPC on 443 with TLS
    tls = {"listeners": [{"name": "https", "port": 443, "protocol": "HTTPS"}]}
    iris = model_outputs(cfg, tls)["iris"]
    assert iris["http"] == "https://iris.models.dev.example.com/v2/models/iris"
    assert iris["grpc"] == "iris.models.dev.example.com:443" and iris["grpc_tls"]
