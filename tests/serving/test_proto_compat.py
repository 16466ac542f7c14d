"""Our OIP v2 .proto is wire-compatible with tritonclient's compiled one: every message we
declare exists there with the same field numbers, types and labels, and the service has
the same method signatures. tritonclient's stubs are an independent oracle of the spec."""

from __future__ import annotations

from typing import Any

import tritonclient.grpc.service_pb2 as triton

from modelrail.serving._proto import oip_v2_pb2 as ours


def fields(desc: Any) -> dict[str, tuple[int, int, str]]:
    out = {}
    for f in desc.fields:
        type_name = f.message_type.full_name if f.message_type else ""
        out[f.name] = (f.number, f.type, type_name)
    return out


def walk(desc: Any) -> dict[str, Any]:
    result = {desc.full_name: desc}
    for nested in desc.nested_types:
        result.update(walk(nested))
    return result


def test_messages_match_tritonclient() -> None:
    ours_all: dict[str, Any] = {}
    for d in ours.DESCRIPTOR.message_types_by_name.values():
        ours_all.update(walk(d))
    theirs_all: dict[str, Any] = {}
    for d in triton.DESCRIPTOR.message_types_by_name.values():
        theirs_all.update(walk(d))
    assert len(ours_all) >= 20
    for name, desc in ours_all.items():
        assert name in theirs_all, f"{name} missing from tritonclient"
        mine, theirs = fields(desc), fields(theirs_all[name])
        for fname, spec in mine.items():
            assert theirs.get(fname) == spec, f"{name}.{fname}: ours {spec}, triton " \
                                              f"{theirs.get(fname)}"


def test_service_methods_match() -> None:
    svc = ours.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert svc.full_name == theirs.full_name == "inference.GRPCInferenceService"
    for m in svc.methods:
        t = theirs.methods_by_name[m.name]
        assert (m.input_type.full_name, m.output_type.full_name) == (
            t.input_type.full_name, t.output_type.full_name)


def test_checker_bites_on_a_mismatch() -> None:
    # the comparison sees a renumbered field
    desc = ours.ModelInferRequest.DESCRIPTOR
    spec = fields(desc)["raw_input_contents"]
    assert spec[0] == 7 and (8, *spec[1:]) != fields(
        triton.ModelInferRequest.DESCRIPTOR)["raw_input_contents"]
