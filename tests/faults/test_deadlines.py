"""A hung payment service under an order load: the order service keeps its own answer budget
(SHOP_ORDER_SAGA_BUDGET_S) and answers every CreateOrder with the order still PENDING, though
each client would have waited much longer; once the payment service wakes up every order
ends as its card says and the full invariant check holds.

The clients' deadlines are far past the budget, so the time measured is the server's
answer, not the client giving up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.natsd import NatsServer
from ops.process import System, start_system
from tests.fixtures_services import START_TIMEOUT_S, TEST_ENV
from tests.support.invariants import check_invariants
from tests.support.load import OrderClient, paced, set_stock
from tests.support.users import create_users

PRODUCT = "mechanical-keyboard"
STOCK = {PRODUCT: 1000}
BUDGET_S = 2.0
CLIENT_TIMEOUT_S = BUDGET_S + 8.0
ANSWER_MARGIN_S = 1.0  # the answer within the budget plus this (a loaded machine)
HUNG_S = 6.0
ORDERS = 12


@pytest.fixture
def budget_system(fresh_nats: NatsServer, data_dir: Path) -> Iterator[System]:
    env = {**TEST_ENV, "SHOP_LOG_LEVEL": "INFO", "SHOP_ORDER_SAGA_BUDGET_S": str(BUDGET_S),
           # The charge keeps trying while the payment service is frozen.
           "SHOP_SAGA_STEP_TIMEOUT_S": "1", "SHOP_SAGA_CHARGE_ATTEMPTS": "60",
           "SHOP_BREAKER_RESET_S": "1"}
    sysm = start_system(data_dir, fresh_nats.url, env=env, ready_timeout=START_TIMEOUT_S)
    try:
        yield sysm
    finally:
        for proc in sysm.processes:
            proc.sigcont()
        sysm.stop()


async def test_hung_payment_answers_within_budget_and_orders_end_consistent(
        budget_system: System) -> None:
    sysm = budget_system
    users = await create_users(sysm.addr("user"), 3, "hung")
    await set_stock(sysm.addr("inventory"), STOCK)
    cards = ["tok_chargeDeclined" if i % 4 == 3 else "tok_visa" for i in range(ORDERS)]
    async with OrderClient(sysm.addr("order"), timeout_s=CLIENT_TIMEOUT_S) as client:
        # Warm the channel so the measurement is the budget, not a connect.
        warm = await client.create(users[0], {PRODUCT: 1}, key="warm")
        assert warm.what == "ORDER_STATUS_CONFIRMED", warm
        sysm["payment"].sigstop()
        frozen_at = time.monotonic()
        try:
            answers = await paced(ORDERS, 2.0, 6, lambda i: client.create(
                users[i % 3], {PRODUCT: 1 + i % 2}, key=f"hung-{i}", card=cards[i]))
            await asyncio.sleep(max(0.0, frozen_at + HUNG_S - time.monotonic()))
        finally:
            sysm["payment"].sigcont()
    slow = [a for a in answers if a.took_s >= BUDGET_S + ANSWER_MARGIN_S]
    assert not slow, f"answered after the {BUDGET_S:g} s budget: {slow}"
    assert [a.what for a in answers] == ["ORDER_STATUS_PENDING"] * ORDERS, answers

    report = await check_invariants(sysm, stock_set=STOCK, created=client.created,
                                    expect_orders=ORDERS + 1, timeout_s=60)
    report.assert_ok()
    final = {o.id: o.status for o in report.orders}
    for answer, card in zip(answers, cards, strict=True):
        want = {"CANCELLED"} if card == "tok_chargeDeclined" else {"CONFIRMED", "SHIPPED"}
        assert final[answer.order_id] in want, (answer, card, final[answer.order_id])
