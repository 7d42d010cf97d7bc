"""kill -9 of the order service with sagas in flight (every one stuck at its charge, the
payment service frozen): after the restart every order still ends final and the full
invariant check holds (docs/guarantees.md)."""

from __future__ import annotations

import pytest

from ops.process import System
from tests.fixtures_services import START_TIMEOUT_S
from tests.support.invariants import check_invariants
from tests.support.load import OrderClient, paced, set_stock
from tests.support.users import create_users

PRODUCTS = {"espresso-machine": 30, "headphones": 25}
ORDERS = 16

pytestmark = pytest.mark.timeout(180)


async def test_kill_order_mid_saga_every_order_final_and_invariants_hold(
        fault_system: System) -> None:
    sysm = fault_system
    users = await create_users(sysm.addr("user"), 4, "saga-kill")
    await set_stock(sysm.addr("inventory"), PRODUCTS)
    products = list(PRODUCTS)
    # Payment frozen: every saga gets stuck at (or before) its charge.
    sysm["payment"].sigstop()
    try:
        async with OrderClient(sysm.addr("order"), timeout_s=1.5) as client:
            answers = await paced(ORDERS, 0.0, ORDERS, lambda i: client.create(
                users[i % 4], {products[i % 2]: 1 + i % 3}, key=f"saga-{i}",
                card="tok_chargeDeclined" if i % 4 == 3 else "tok_visa"))
        assert "ORDER_STATUS_PENDING" in {a.what for a in answers}, answers  # in flight
        sysm["order"].kill()
    finally:
        sysm["payment"].sigcont()
    sysm["order"].restart(timeout=START_TIMEOUT_S, graceful=False)

    report = await check_invariants(sysm, stock_set=PRODUCTS, created=client.created,
                                    expect_orders=ORDERS, timeout_s=60)
    report.assert_ok()
    assert len(report.orders) == ORDERS
    assert report.count("CONFIRMED", "SHIPPED") > 0, report.summary()
    assert any(o.cancel_reason == "payment declined" for o in report.orders), report.summary()
