"""How a long-running shop process sets up Python's cycle collector. Stdlib only, so the
gateway can use it without importing the gRPC runtime.

A request allocates a few hundred container objects (protobuf wrappers, dicts, frames of
coroutines); with the default gen-0 threshold of 2,000 the collector runs every few
requests and each full pass walks every module, class and function loaded at start-up.
Measured on the gateway's GET of a product at 64 connections: p99 15-20 % lower and ~4 %
less CPU per request with the start-up heap frozen and gen 0 collected every 20,000
allocations. Nothing here stops the collector: cycles made while serving are still freed.
"""

from __future__ import annotations

import gc

# Allocations between gen-0 passes, and the gen-0/gen-1 passes before the next older one.
SERVING_THRESHOLDS: tuple[int, int, int] = (20_000, 50, 100)


def tune_for_serving(thresholds: tuple[int, int, int] = SERVING_THRESHOLDS) -> None:
    """Call once, after the imports and before serving: what is alive now (modules,
    classes, settings) lives as long as the process, so the collector stops walking it."""
    gc.collect()  # what start-up left as garbage is freed, not frozen
    gc.freeze()
    gc.set_threshold(*thresholds)


__all__ = ["SERVING_THRESHOLDS", "tune_for_serving"]
