"""`shopctl inventory rebuild`: its arguments and what it prints for a replay's answer."""

from __future__ import annotations

import pytest
from shop.inventory.v1 import inventory_pb2 as pb

from ops import shopctl


def test_rebuild_parses_verify_and_from_scratch() -> None:
    args = shopctl.build_parser().parse_args(["inventory", "rebuild", "--verify",
                                              "--from-scratch"])
    assert (args.verify, args.from_scratch, args.func) == (True, True, shopctl.cmd_inventory)
    plain = shopctl.build_parser().parse_args(["inventory", "rebuild"])
    assert (plain.verify, plain.from_scratch, plain.timeout) == (False, False, 600.0)


def test_a_sound_ledger_prints_no_difference(capsys: pytest.CaptureFixture[str]) -> None:
    resp = pb.RebuildStockResponse(products=3, events=40)
    assert shopctl.print_rebuild(resp, verify=True, from_scratch=False) == 0
    assert capsys.readouterr().out.splitlines() == [
        "replayed 3 products, 40 events (from snapshots)", "no difference"]


def _diffs() -> pb.RebuildStockResponse:
    return pb.RebuildStockResponse(products=3, events=40, differences=[
        pb.StockDifference(product_id="mug", problem="served available 1 (events say 4)",
                           served=pb.Stock(available=1, reserved=2, sold=0),
                           replayed=pb.Stock(available=4, reserved=2, sold=0)),
        pb.StockDifference(product_id="pen", problem="events cannot be replayed: x",
                           served=pb.Stock(available=1)),
    ])


def test_verify_prints_each_difference_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert shopctl.print_rebuild(_diffs(), verify=True, from_scratch=True) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "replayed 3 products, 40 events (from the first event)"
    assert out[1].split() == ["PRODUCT", "SERVED", "EVENTS", "SAY", "PROBLEM"]
    assert out[2].split()[:3] == ["mug", "1/2/0", "4/2/0"]
    assert out[3].split()[:3] == ["pen", "1/0/0", "-"]
    assert out[-1].startswith("2 products differ")


def test_rebuild_exits_1_unless_every_difference_was_rewritten(
        capsys: pytest.CaptureFixture[str]) -> None:
    partly = _diffs()
    partly.rewritten = 1
    assert shopctl.print_rebuild(partly, verify=False, from_scratch=False) == 1
    assert capsys.readouterr().out.splitlines()[-1] == "rewrote 1 of 2"
    partly.rewritten = 2
    assert shopctl.print_rebuild(partly, verify=False, from_scratch=False) == 0
