"""What a process's composition root hands the code it builds: where calls go.

    async def build(settings: Settings, wiring: Wiring) -> App:
        products = wiring.downstream("product", product_pb2_grpc.ProductServiceStub)

`run_service` makes the process's one `Discovery` before `build` and passes it here as
every Downstream's picker; with the registry off (or in tests) there is none, and calls
go to `<SERVICE>_ADDR` or the default port.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import pybreaker
from grpc import aio

from services.common.clients import Downstream, Picker

StubT = TypeVar("StubT")


@dataclass(frozen=True)
class Wiring:
    picker: Picker | None = None

    def downstream(
        self,
        service: str,
        stub_factory: Callable[[aio.Channel], StubT],
        *,
        cap_s: float = 5.0,
        address: str | None = None,
        breaker: pybreaker.CircuitBreaker | None = None,
        speaks_for_users: bool = False,
    ) -> Downstream[StubT]:
        """A Downstream of `service` that picks its instances through this wiring."""
        return Downstream(service, stub_factory, cap_s=cap_s, address=address,
                          breaker=breaker, speaks_for_users=speaks_for_users,
                          picker=self.picker)
