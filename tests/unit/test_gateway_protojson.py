"""gateway.protojson.to_dict is byte-for-byte json_format.MessageToDict, on every type.

Every message type of every contract in gen/ (and the well-known types, and a synthetic
message with every field kind our contracts do not use yet: maps, oneofs, proto3 optional,
floats, bytes, wrappers, Struct) is filled with random values — defaults, extremes,
unicode, unknown enum numbers, unset submessages — and both renderings are compared after
json.dumps as the gateway writes it (so key order counts too).
"""

from __future__ import annotations

import importlib
import math
import pkgutil
import random
from collections.abc import Iterator
from typing import Any

import pytest
import shop
from google.protobuf import (
    any_pb2,
    descriptor_pb2,
    descriptor_pool,
    duration_pb2,
    empty_pb2,
    field_mask_pb2,
    json_format,
    struct_pb2,
    timestamp_pb2,
    wrappers_pb2,
)
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from gateway.jsonmap import dumps
from gateway.protojson import to_dict

F = FieldDescriptor
ROUNDS = 60


def _contract_messages() -> Iterator[Descriptor]:
    for mod in pkgutil.walk_packages(shop.__path__, "shop."):
        if not mod.name.endswith("_pb2"):
            continue
        module = importlib.import_module(mod.name)
        for desc in module.DESCRIPTOR.message_types_by_name.values():
            yield from _with_nested(desc)


def _with_nested(desc: Descriptor) -> Iterator[Descriptor]:
    yield desc
    for nested in desc.nested_types:
        if not nested.GetOptions().map_entry:
            yield from _with_nested(nested)


def _synthetic() -> Descriptor:
    """A proto3 message with every field kind, built at run time."""
    fdp = descriptor_pb2.FileDescriptorProto(
        name="protojson_test.proto", package="t.v1", syntax="proto3"
    )
    fdp.dependency.extend(
        [
            "google/protobuf/timestamp.proto",
            "google/protobuf/wrappers.proto",
            "google/protobuf/struct.proto",
            "google/protobuf/any.proto",
            "google/protobuf/duration.proto",
        ]
    )
    enum = fdp.enum_type.add(name="Colour")
    for i, n in enumerate(["COLOUR_UNSPECIFIED", "COLOUR_RED", "COLOUR_BLUE"]):
        enum.value.add(name=n, number=i)
    inner = fdp.message_type.add(name="Inner")
    inner.field.add(name="note", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    inner.field.add(name="big", number=2, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    msg = fdp.message_type.add(name="All")
    FDP = descriptor_pb2.FieldDescriptorProto
    scalars = [
        ("d", FDP.TYPE_DOUBLE),
        ("f", FDP.TYPE_FLOAT),
        ("i32", FDP.TYPE_INT32),
        ("i64", FDP.TYPE_INT64),
        ("u32", FDP.TYPE_UINT32),
        ("u64", FDP.TYPE_UINT64),
        ("s32", FDP.TYPE_SINT32),
        ("s64", FDP.TYPE_SINT64),
        ("fx64", FDP.TYPE_FIXED64),
        ("sfx64", FDP.TYPE_SFIXED64),
        ("flag", FDP.TYPE_BOOL),
        ("text_value", FDP.TYPE_STRING),
        ("raw", FDP.TYPE_BYTES),
    ]
    number = 0

    def add(name: str, **kw: Any) -> None:
        nonlocal number
        number += 1
        msg.field.add(name=name, number=number, label=kw.pop("label", FDP.LABEL_OPTIONAL), **kw)

    # Declared out of number order on purpose for part of the fields.
    for name, t in scalars:
        add(name, type=t)
        add(f"many_{name}", type=t, label=FDP.LABEL_REPEATED)
    add("colour", type=FDP.TYPE_ENUM, type_name=".t.v1.Colour")
    add("colours", type=FDP.TYPE_ENUM, type_name=".t.v1.Colour", label=FDP.LABEL_REPEATED)
    add("inner", type=FDP.TYPE_MESSAGE, type_name=".t.v1.Inner")
    add("inners", type=FDP.TYPE_MESSAGE, type_name=".t.v1.Inner", label=FDP.LABEL_REPEATED)
    for wkt in (
        "Timestamp",
        "Duration",
        "Int64Value",
        "StringValue",
        "BoolValue",
        "Struct",
        "Value",
        "Any",
        "DoubleValue",
        "BytesValue",
    ):
        add(f"wkt_{wkt.lower()}", type=FDP.TYPE_MESSAGE, type_name=f".google.protobuf.{wkt}")
    add(
        "times",
        type=FDP.TYPE_MESSAGE,
        type_name=".google.protobuf.Timestamp",
        label=FDP.LABEL_REPEATED,
    )
    # proto3 optional (synthetic oneof) and a real oneof.
    msg.oneof_decl.add(name="choice")
    add("pick_text", type=FDP.TYPE_STRING, oneof_index=0)
    add("pick_inner", type=FDP.TYPE_MESSAGE, type_name=".t.v1.Inner", oneof_index=0)
    msg.oneof_decl.add(name="_maybe")
    add("maybe", type=FDP.TYPE_INT64, proto3_optional=True, oneof_index=1)
    # Maps.
    for key_t, val_t, val_name in [
        (FDP.TYPE_STRING, FDP.TYPE_INT64, None),
        (FDP.TYPE_INT32, FDP.TYPE_STRING, None),
        (FDP.TYPE_BOOL, FDP.TYPE_MESSAGE, ".t.v1.Inner"),
        (FDP.TYPE_UINT64, FDP.TYPE_ENUM, ".t.v1.Colour"),
    ]:
        number += 1
        entry_name = f"M{number}Entry"
        entry = msg.nested_type.add(name=entry_name)
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, type=key_t, label=FDP.LABEL_OPTIONAL)
        value = entry.field.add(name="value", number=2, type=val_t, label=FDP.LABEL_OPTIONAL)
        if val_name:
            value.type_name = val_name
        msg.field.add(
            name=f"m{number}",
            number=number,
            type=FDP.TYPE_MESSAGE,
            type_name=f".t.v1.All.{entry_name}",
            label=FDP.LABEL_REPEATED,
        )
    # Swap two fields' numbers: declaration order != number order.
    msg.field[0].number, msg.field[2].number = msg.field[2].number, msg.field[0].number
    pool = descriptor_pool.DescriptorPool()
    for dep in (timestamp_pb2, wrappers_pb2, struct_pb2, any_pb2, duration_pb2):
        pool.AddSerializedFile(dep.DESCRIPTOR.serialized_pb)
    pool.Add(fdp)
    return pool.FindMessageTypeByName("t.v1.All")


_STRINGS = ["", "a", "Ünïcødé ✓", 'quote " back \\ slash', "\n\t\x00ctl", "😀", "x" * 50]
_INT_LIMITS = {
    F.CPPTYPE_INT32: (-(2**31), 2**31 - 1),
    F.CPPTYPE_INT64: (-(2**63), 2**63 - 1),
    F.CPPTYPE_UINT32: (0, 2**32 - 1),
    F.CPPTYPE_UINT64: (0, 2**64 - 1),
}


def _scalar(fd: Any, rng: random.Random) -> Any:  # a FieldDescriptor (either runtime)
    cpp = fd.cpp_type
    if cpp in _INT_LIMITS:
        low, high = _INT_LIMITS[cpp]
        return rng.choice([0, 1, low, high, rng.randint(low, high), rng.randint(0, 1000)])
    if cpp == F.CPPTYPE_BOOL:
        return rng.random() < 0.5
    if cpp == F.CPPTYPE_STRING:
        if fd.type == F.TYPE_BYTES:
            return rng.choice([b"", b"\x00\xff", bytes(rng.randrange(256) for _ in range(7))])
        return rng.choice(_STRINGS)
    if cpp in (F.CPPTYPE_DOUBLE, F.CPPTYPE_FLOAT):
        return rng.choice(
            [
                0.0,
                -0.0,
                1.5,
                -2.25,
                0.1,
                1e300 if cpp == F.CPPTYPE_DOUBLE else 3.4e38,
                math.inf,
                -math.inf,
                math.nan,
                rng.uniform(-1e6, 1e6),
            ]
        )
    if cpp == F.CPPTYPE_ENUM:
        assert fd.enum_type is not None
        numbers = [v.number for v in fd.enum_type.values]
        return rng.choice([*numbers, 0, 97])  # 97: an unknown value of an open enum
    raise AssertionError(fd)


def _fill(msg: Any, rng: random.Random, depth: int = 0) -> None:  # any message type
    name = msg.DESCRIPTOR.full_name
    if name == "google.protobuf.Timestamp":
        msg.seconds = rng.choice([0, 1, 1_700_000_000, rng.randint(0, 253_402_300_799)])
        msg.nanos = rng.choice([0, 1_000_000, 123_456_000, 999_999_999, 500])
        return
    if name == "google.protobuf.Duration":
        msg.seconds = rng.randint(0, 10_000)
        msg.nanos = rng.choice([0, 5_000_000])
        return
    if name == "google.protobuf.Any":
        if rng.random() < 0.7:
            inner = timestamp_pb2.Timestamp(seconds=rng.randint(0, 2**31))
            msg.Pack(inner)
        return
    if name in ("google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"):
        value = {"k": rng.choice(_STRINGS), "n": 1.5, "b": True, "l": [1.0, "x"], "z": None}
        if name == "google.protobuf.Struct":
            msg.update(value)
        elif name == "google.protobuf.Value":
            json_format.ParseDict(value, msg)
        else:
            msg.extend([1.0, "y"])
        return
    if name == "google.protobuf.FieldMask":
        msg.paths.extend(rng.sample(["a", "b_c", "d.e_f"], rng.randint(0, 3)))
        return
    for fd in msg.DESCRIPTOR.fields:
        if rng.random() < 0.25:
            continue  # unset / default
        oneof = fd.containing_oneof
        if (
            oneof is not None
            and not oneof.name.startswith("_")
            and msg.WhichOneof(oneof.name) is not None
        ):
            continue  # one member of a oneof at most
        mt = fd.message_type
        if fd.is_repeated and mt is not None and mt.GetOptions().map_entry:
            kfd, vfd = mt.fields_by_name["key"], mt.fields_by_name["value"]
            container = getattr(msg, fd.name)
            for _ in range(rng.randint(0, 3)):
                key = _scalar(kfd, rng)
                if vfd.cpp_type == F.CPPTYPE_MESSAGE:
                    if depth < 3:
                        _fill(container[key], rng, depth + 1)
                else:
                    container[key] = _scalar(vfd, rng)
        elif fd.is_repeated:
            container = getattr(msg, fd.name)
            for _ in range(rng.randint(0, 3)):
                if fd.cpp_type == F.CPPTYPE_MESSAGE:
                    if depth < 3:
                        _fill(container.add(), rng, depth + 1)
                else:
                    container.append(_scalar(fd, rng))
        elif fd.cpp_type == F.CPPTYPE_MESSAGE:
            if depth < 3:
                sub = getattr(msg, fd.name)
                _fill(sub, rng, depth + 1)
                if rng.random() < 0.5 or fd.has_presence:
                    sub.SetInParent()
        else:
            setattr(msg, fd.name, _scalar(fd, rng))


def _reference(msg: Message) -> bytes:
    return dumps(json_format.MessageToDict(msg, always_print_fields_with_no_presence=True))


CONTRACT_TYPES = sorted(_contract_messages(), key=lambda d: d.full_name)
WKT_TYPES = [
    m.DESCRIPTOR
    for m in (
        timestamp_pb2.Timestamp,
        duration_pb2.Duration,
        field_mask_pb2.FieldMask,
        empty_pb2.Empty,
        any_pb2.Any,
        struct_pb2.Struct,
        struct_pb2.Value,
        struct_pb2.ListValue,
        wrappers_pb2.Int64Value,
        wrappers_pb2.StringValue,
    )
]


def test_every_contract_message_type_is_covered() -> None:
    names = {d.full_name for d in CONTRACT_TYPES}
    assert {"shop.product.v1.Product", "shop.order.v1.Order", "shop.user.v1.User"} <= names
    assert len(names) > 50


@pytest.mark.parametrize(
    "desc", [*CONTRACT_TYPES, *WKT_TYPES, _synthetic()], ids=lambda d: d.full_name
)
def test_same_bytes_as_json_format(desc: Descriptor) -> None:
    cls = GetMessageClass(desc)
    rng = random.Random(desc.full_name)
    empty = cls()
    assert dumps(to_dict(empty)) == _reference(empty)
    for _ in range(ROUNDS):
        msg = cls()
        _fill(msg, rng)
        assert dumps(to_dict(msg)) == _reference(msg), msg
