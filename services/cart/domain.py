"""Cart rules: validation, adding and merging lines, totals. Pure (stdlib only)."""

from __future__ import annotations

from dataclasses import dataclass

from services.common.errors import FailedPrecondition, InvalidArgument

MAX_ID_LEN = 128
MAX_QUANTITY = 99
# Keeps a cart (and the order made from it) a sensible size.
MAX_LINES = 100
DEFAULT_CURRENCY = "USD"


@dataclass(frozen=True, slots=True)
class ProductInfo:
    """What the cart keeps of a product, as the product service described it."""

    product_id: str
    name: str
    price_cents: int
    currency: str


@dataclass(frozen=True, slots=True)
class CartLine:
    product_id: str
    quantity: int
    unit_price_cents: int
    name: str
    currency: str

    @property
    def subtotal_cents(self) -> int:
        return self.quantity * self.unit_price_cents


@dataclass(frozen=True, slots=True)
class Cart:
    user_id: str
    items: tuple[CartLine, ...] = ()

    @property
    def total_cents(self) -> int:
        return sum(line.subtotal_cents for line in self.items)

    @property
    def currency(self) -> str:
        # add_line keeps one currency per cart, so the first line speaks for all.
        return self.items[0].currency if self.items else DEFAULT_CURRENCY

    def line(self, product_id: str) -> CartLine | None:
        return next((li for li in self.items if li.product_id == product_id), None)


def validate_product_id(product_id: str) -> str:
    if not product_id:
        raise InvalidArgument("product_id is required")
    if len(product_id) > MAX_ID_LEN:
        raise InvalidArgument(f"product_id is longer than {MAX_ID_LEN} characters")
    return product_id


def validate_quantity(quantity: int) -> int:
    if not 1 <= quantity <= MAX_QUANTITY:
        raise InvalidArgument(f"quantity must be between 1 and {MAX_QUANTITY}, got {quantity}")
    return quantity


def add_line(cart: Cart, product: ProductInfo, quantity: int) -> CartLine:
    """The line `product` has after adding `quantity` of it to `cart`.

    An existing line grows (the total still at most MAX_QUANTITY) and takes the current
    price and name; a cart holds one currency, so its total means something.
    """
    validate_quantity(quantity)
    existing = cart.line(product.product_id)
    if existing is None:
        if len(cart.items) >= MAX_LINES:
            raise FailedPrecondition(f"a cart holds at most {MAX_LINES} different products")
        new_quantity = quantity
    else:
        new_quantity = existing.quantity + quantity
        if new_quantity > MAX_QUANTITY:
            raise InvalidArgument(
                f"quantity of {product.product_id} would be {new_quantity}; "
                f"at most {MAX_QUANTITY} per product")
    if cart.items and product.currency != cart.currency:
        raise FailedPrecondition(
            f"the cart is in {cart.currency}; {product.product_id} is priced in "
            f"{product.currency}")
    return CartLine(product.product_id, new_quantity, product.price_cents, product.name,
                    product.currency)


def with_line(cart: Cart, line: CartLine) -> Cart:
    """`cart` with `line` put in (replacing its product's line, else appended)."""
    items = [li for li in cart.items if li.product_id != line.product_id]
    position = next((i for i, li in enumerate(cart.items) if li.product_id == line.product_id),
                    len(items))
    items.insert(position, line)
    return Cart(cart.user_id, tuple(items))
