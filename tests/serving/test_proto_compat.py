"""Our OIP v2 .proto is wire-compatible with tritonclient's compiled one: every message we
declare exists there with the same field numbers, types and labels, and the service has
the same method signatures. tritonclient's stubs are an independent oracle of the spec.
Every message also survives a wire round trip both ways (serialized by one side, parsed
by the other, compared field by field), including the Triton extensions tritonclient's
gRPC client calls: ModelStatistics and RepositoryIndex."""

from __future__ import annotations

from typing import Any

import pytest
import tritonclient.grpc.service_pb2 as triton
from google.protobuf.descriptor import FieldDescriptor

from modelrail.serving._proto import oip_v2_pb2 as ours
from modelrail.serving._proto import oip_v2_pb2_grpc as ours_grpc


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


# ---- wire round trips: serialize with one side, parse with the other, field by field ----

TRITON_EXTENSION_MESSAGES = (
    "StatisticDuration", "InferStatistics", "InferBatchStatistics", "InferResponseStatistics",
    "MemoryUsage", "ModelStatistics", "ModelStatisticsRequest", "ModelStatisticsResponse",
    "RepositoryIndexRequest", "RepositoryIndexResponse",
)


def _scalar(field: Any, seed: int) -> Any:
    """A distinct value per field and seed that exercises the field's wire type: uint64
    above 2**63, negative int64, non-ASCII strings, exactly representable floats."""
    t = field.type
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return 2**64 - 1 - seed
    if t in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64,
             FieldDescriptor.TYPE_SFIXED64):
        return -(2**62) - seed
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return 2**32 - 1 - seed
    if t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32,
             FieldDescriptor.TYPE_SFIXED32):
        return -(2**30) - seed
    if t in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        return 0.5 + seed
    if t == FieldDescriptor.TYPE_BOOL:
        return True
    if t == FieldDescriptor.TYPE_STRING:
        return f"{field.name}-é-{seed}"
    if t == FieldDescriptor.TYPE_BYTES:
        return bytes([seed % 256, 0, 255]) + field.name.encode()
    raise AssertionError(f"unhandled field type {t} for {field.full_name}")


def _is_map(field: Any) -> bool:
    mt = field.message_type
    return bool(mt is not None and mt.GetOptions().map_entry)


def fill(msg: Any, seed: int = 1, depth: int = 0) -> Any:
    """Set every field of `msg` (recursively, two entries in each repeated field and
    map), one member per oneof, with values derived from `seed`."""
    seen_oneofs: set[str] = set()
    for i, field in enumerate(msg.DESCRIPTOR.fields):
        s = seed * 31 + i
        oneof = field.containing_oneof
        if oneof is not None:
            if oneof.name in seen_oneofs:
                continue
            seen_oneofs.add(oneof.name)
        if _is_map(field):
            key_f, val_f = field.message_type.fields_by_name["key"], \
                field.message_type.fields_by_name["value"]
            container = getattr(msg, field.name)
            for k in range(2):
                key = _scalar(key_f, s + k)
                if val_f.message_type is not None:
                    fill(container[key], s + k, depth + 1)
                else:
                    container[key] = _scalar(val_f, s + k)
        elif field.is_repeated:
            container = getattr(msg, field.name)
            for k in range(2):
                if field.message_type is not None:
                    fill(container.add(), s + k, depth + 1)
                else:
                    container.append(_scalar(field, s + k))
        elif field.message_type is not None:
            fill(getattr(msg, field.name), s, depth + 1)
        else:
            setattr(msg, field.name, _scalar(field, s))
    return msg


def assert_same(a: Any, b: Any, path: str) -> None:
    """Every field `a`'s descriptor declares has the same value in `b` (looked up by
    name), recursively; `b` is a message of the other side's classes."""
    for field in a.DESCRIPTOR.fields:
        where = f"{path}.{field.name}"
        va, vb = getattr(a, field.name), getattr(b, field.name)
        if _is_map(field):
            assert set(va.keys()) == set(vb.keys()), where
            msg_values = field.message_type.fields_by_name["value"].message_type is not None
            for key in va:
                if msg_values:
                    assert_same(va[key], vb[key], f"{where}[{key!r}]")
                else:
                    assert va[key] == vb[key], f"{where}[{key!r}]"
        elif field.is_repeated:
            assert len(va) == len(vb), where
            for k, (x, y) in enumerate(zip(va, vb, strict=True)):
                if field.message_type is not None:
                    assert_same(x, y, f"{where}[{k}]")
                else:
                    assert x == y, f"{where}[{k}]"
        elif field.message_type is not None:
            assert a.HasField(field.name) == b.HasField(field.name), where
            assert_same(va, vb, where)
        else:
            if field.containing_oneof is not None:
                assert a.WhichOneof(field.containing_oneof.name) == \
                    b.WhichOneof(field.containing_oneof.name), where
            assert va == vb, f"{where}: {va!r} != {vb!r}"


def _message_names() -> list[str]:
    return sorted(ours.DESCRIPTOR.message_types_by_name)


def test_triton_extension_messages_and_rpcs_are_declared() -> None:
    for name in TRITON_EXTENSION_MESSAGES:
        assert name in ours.DESCRIPTOR.message_types_by_name, name
    methods = ours.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods_by_name
    assert methods["ModelStatistics"].input_type.name == "ModelStatisticsRequest"
    assert methods["ModelStatistics"].output_type.name == "ModelStatisticsResponse"
    assert methods["RepositoryIndex"].input_type.name == "RepositoryIndexRequest"
    assert methods["RepositoryIndex"].output_type.name == "RepositoryIndexResponse"
    # the generated stub and servicer carry them too
    assert hasattr(ours_grpc.GRPCInferenceServiceServicer, "ModelStatistics")
    assert hasattr(ours_grpc.GRPCInferenceServiceServicer, "RepositoryIndex")


def test_field_labels_match_tritonclient() -> None:
    # optional vs repeated changes the wire encoding of a message; numbers and types are
    # checked by test_messages_match_tritonclient
    for name in _message_names():
        for mine in walk(ours.DESCRIPTOR.message_types_by_name[name]).values():
            theirs = triton.DESCRIPTOR.message_types_by_name.get(mine.name) \
                if mine.containing_type is None else None
            if theirs is None:
                continue
            for f in mine.fields:
                assert f.is_repeated == theirs.fields_by_name[f.name].is_repeated, f.full_name


@pytest.mark.parametrize("name", _message_names())
def test_ours_to_tritonclient_round_trip(name: str) -> None:
    mine = fill(getattr(ours, name)())
    wire = mine.SerializeToString(deterministic=True)
    parsed = getattr(triton, name).FromString(wire)
    assert_same(mine, parsed, name)
    # nothing of ours landed in the other side's unknown fields, and back again it is
    # byte-identical
    assert parsed.SerializeToString(deterministic=True) == wire


@pytest.mark.parametrize("name", _message_names())
def test_tritonclient_to_ours_round_trip(name: str) -> None:
    # tritonclient's fully populated message: every field we declare must come through;
    # fields Triton has and we do not declare are allowed (they stay unknown fields)
    theirs = fill(getattr(triton, name)())
    parsed = getattr(ours, name).FromString(theirs.SerializeToString(deterministic=True))
    assert_same(parsed, theirs, name)


def test_new_messages_declare_every_tritonclient_field() -> None:
    # the Triton extension messages are complete: nothing tritonclient sends is dropped
    for name in TRITON_EXTENSION_MESSAGES:
        for full, mine in walk(ours.DESCRIPTOR.message_types_by_name[name]).items():
            theirs = walk(triton.DESCRIPTOR.message_types_by_name[name])[full]
            assert fields(mine) == fields(theirs), full


def test_round_trip_checker_bites() -> None:
    a = fill(ours.StatisticDuration())
    b = triton.StatisticDuration.FromString(a.SerializeToString())
    b.ns += 1
    with pytest.raises(AssertionError):
        assert_same(a, b, "StatisticDuration")
