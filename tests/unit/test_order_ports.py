"""ports.classify: one table of refusals per saga step, the breaker's list for "unwell"."""

from __future__ import annotations

import grpc
import pytest
from grpc import aio

from services.common.breakers import FAILURE_CODES
from services.order.domain import Refusal, Step
from services.order.ports import REFUSALS, StepRefused, StepUnknown, StepUnwell, classify


def _error(code: grpc.StatusCode) -> aio.AioRpcError:
    return aio.AioRpcError(code, aio.Metadata(), aio.Metadata(), details="why")


def test_every_step_that_calls_a_downstream_has_its_refusals() -> None:
    # Confirming calls nothing (inventory commits on order.confirmed).
    assert set(REFUSALS) == set(Step) - {Step.DONE, Step.CONFIRM}
    # A refusal is a business answer: never one of the codes the breaker counts as unwell.
    for codes in REFUSALS.values():
        assert not set(codes) & FAILURE_CODES


def test_an_invalid_card_is_a_typed_refusal_not_a_message() -> None:
    got = classify(Step.CHARGE, _error(grpc.StatusCode.INVALID_ARGUMENT), "payment.Charge")
    assert isinstance(got, StepRefused)
    assert got.kind is Refusal.INVALID_CARD
    assert str(got) == "why"


@pytest.mark.parametrize("code", sorted(FAILURE_CODES, key=str))
def test_the_breakers_failure_codes_are_unwell(code: grpc.StatusCode) -> None:
    got = classify(Step.RESERVE, _error(code), "inventory.ReserveStock")
    assert isinstance(got, StepUnwell)


def test_any_other_code_leaves_the_outcome_unknown() -> None:
    got = classify(Step.REFUND, _error(grpc.StatusCode.FAILED_PRECONDITION), "payment.Refund")
    assert type(got) is StepUnknown
