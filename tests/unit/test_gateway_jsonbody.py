"""Whatever a client sends, the decoder and the transcoder answer a message or a 4xx.

Property tests over every route's `Binding.build_request`: arbitrary bytes, any JSON
value (huge and non-finite numbers, lone surrogates, deep nesting), the route's own field
names with values of every type, and arbitrary query and path parameters. The only
acceptable failure is an `HttpError` with a 4xx status and the one error body.
"""

from __future__ import annotations

import json

import pytest
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.errors import HttpError
from gateway.jsonmap import loads_body
from gateway.rules import load_rules
from gateway.transcoder import Binding
from tests.support.hostile import json_texts, long_digits, raw_bodies

BINDINGS = [Binding.of(r) for r in load_rules()]
BODY_BINDINGS = [b for b in BINDINGS if b.reads_body]
QUERY_BINDINGS = [b for b in BINDINGS if b.query]
PATH_BINDINGS = [b for b in BINDINGS if b.rule.path_fields]

BOUNDED = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _field_names(binding: Binding) -> list[str]:
    desc = binding.rule.input
    return [n for fd in desc.fields for n in (fd.name, fd.json_name)]


def _assert_refusal(err: HttpError) -> None:
    assert 400 <= err.http_status < 500, (err.http_status, err.message)
    body = json.loads(err.body())
    assert set(body) == {"error"}
    assert body["error"]["code"] == err.http_status
    assert body["error"]["status"] == err.status
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert body["error"]["details"] == []


def _build(binding: Binding, params: dict[str, str], query: list[tuple[str, str]],
           body: bytes) -> None:
    try:
        request = binding.build_request(params, query, body)
    except HttpError as err:
        _assert_refusal(err)
    else:
        assert isinstance(request, Message)
        request.SerializeToString()  # what is accepted can be sent on


@pytest.mark.parametrize("binding", BODY_BINDINGS, ids=lambda b: b.rule.key)
def test_any_body_is_a_message_or_a_4xx(binding: Binding) -> None:
    params = {var.name: "x1" for var, _ in binding.rule.path_fields}

    @BOUNDED
    @given(body=raw_bodies(_field_names(binding)))
    def check(body: bytes) -> None:
        _build(binding, params, [], body)

    check()


@pytest.mark.parametrize("binding", QUERY_BINDINGS, ids=lambda b: b.rule.key)
def test_any_query_is_a_message_or_a_4xx(binding: Binding) -> None:
    names = st.one_of(st.sampled_from(sorted(binding.query)), json_texts)
    values = st.one_of(json_texts, long_digits, st.sampled_from(["-1", "1e3", "true", "NaN"]))
    params = {var.name: "x1" for var, _ in binding.rule.path_fields}

    @BOUNDED
    @given(query=st.lists(st.tuples(names, values), max_size=6))
    def check(query: list[tuple[str, str]]) -> None:
        _build(binding, params, query, b"")

    check()


@pytest.mark.parametrize("binding", PATH_BINDINGS, ids=lambda b: b.rule.key)
def test_any_path_value_is_a_message_or_a_4xx(binding: Binding) -> None:
    names = [var.name for var, _ in binding.rule.path_fields]

    @BOUNDED
    @given(values=st.lists(json_texts, min_size=len(names), max_size=len(names)))
    def check(values: list[str]) -> None:
        _build(binding, dict(zip(names, values, strict=True)), [], b"")

    check()


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b'{"quantity": ' + b"9" * 5000 + b"}", "5000 digits"),
        (b'{"quantity": -' + b"1" * 65 + b"}", "65 digits"),
        (b'{"\\ud800": 1}', "lone surrogate"),
        (b'{"productId": "a\\udfffb"}', "lone surrogate"),
    ],
)
def test_the_decoder_names_what_is_wrong(raw: bytes, says: str) -> None:
    with pytest.raises(HttpError) as info:
        loads_body(raw)
    assert info.value.http_status == 400
    assert says in info.value.message


def test_what_the_limits_leave_alone_still_decodes() -> None:
    assert loads_body(b'{"a": ' + b"9" * 64 + b"}") == {"a": int("9" * 64)}
    assert loads_body(b'{"a": "\\ud83d\\ude00"}') == {"a": "\N{GRINNING FACE}"}
    assert loads_body('{"a": "\u00e9"}'.encode()) == {"a": "\u00e9"}


def test_an_error_echoing_a_lone_surrogate_is_still_json() -> None:
    err = HttpError(400, "INVALID_ARGUMENT", "unknown field '\udcff'")
    assert json.loads(err.body())["error"]["message"] == "unknown field '\udcff'"

