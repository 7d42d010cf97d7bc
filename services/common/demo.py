"""The demo catalogue seeded on first start by the product and inventory services."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DemoProduct:
    id: str
    name: str
    description: str
    category: str
    price_cents: int
    stock: int
    currency: str = "USD"


CATALOGUE: tuple[DemoProduct, ...] = (
    DemoProduct(
        "espresso-machine",
        "Espresso Machine",
        "15-bar pump espresso maker",
        "kitchen",
        24900,
        50,
    ),
    DemoProduct(
        "coffee-grinder",
        "Burr Coffee Grinder",
        "Conical burr grinder, 40 settings",
        "kitchen",
        8900,
        80,
    ),
    DemoProduct(
        "french-press",
        "French Press",
        "1 litre borosilicate glass press",
        "kitchen",
        2999,
        120,
    ),
    DemoProduct("chef-knife", "Chef's Knife", "20 cm forged steel knife", "kitchen", 5900, 60),
    DemoProduct(
        "running-shoes",
        "Running Shoes",
        "Lightweight trail running shoes",
        "sports",
        11900,
        40,
    ),
    DemoProduct("yoga-mat", "Yoga Mat", "6 mm non-slip mat", "sports", 3500, 100),
    DemoProduct(
        "water-bottle",
        "Water Bottle",
        "Insulated steel bottle, 750 ml",
        "sports",
        2500,
        200,
    ),
    DemoProduct(
        "headphones",
        "Wireless Headphones",
        "Noise-cancelling over-ear headphones",
        "electronics",
        19900,
        30,
    ),
    DemoProduct("usb-c-charger", "USB-C Charger", "65 W GaN charger", "electronics", 3900, 150),
    DemoProduct(
        "mechanical-keyboard",
        "Mechanical Keyboard",
        "Tenkeyless, hot-swap switches",
        "electronics",
        12900,
        25,
    ),
    DemoProduct(
        "novel-dune",
        "Dune",
        "Frank Herbert's science-fiction classic, paperback",
        "books",
        1099,
        90,
    ),
    DemoProduct(
        "cookbook",
        "The Food Lab",
        "Better home cooking through science",
        "books",
        3999,
        45,
    ),
)

BY_ID: dict[str, DemoProduct] = {p.id: p for p in CATALOGUE}
