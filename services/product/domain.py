"""Catalogue rules: product validation, search, pagination tokens, the in-memory catalogue.

Pure (stdlib only). The service keeps every product in a `Catalogue` (read-heavy, on the
hot path), loaded from the store at start and fed by CreateProduct; the store stays the
source of truth.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import json
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from services.common.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
MAX_BATCH = 100
MAX_QUERY_LEN = 200
MAX_TOKEN_LEN = 1024
MAX_NAME_LEN = 200
MAX_DESCRIPTION_LEN = 2000
MAX_CATEGORY_LEN = 50
# Far below int64, so order totals of many items never overflow.
MAX_PRICE_CENTS = 10**10
DEFAULT_CURRENCY = "USD"

# Ids appear in URLs (/api/products/{id}): no slashes, spaces or other escapes.
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")


@dataclass(frozen=True, slots=True)
class Product:
    id: str
    name: str
    description: str
    category: str
    price_cents: int
    currency: str


SortKey = tuple[str, str]


def sort_key(p: Product) -> SortKey:
    """Listing order: name (case-insensitive), then id so equal names stay stable."""
    return (p.name.casefold(), p.id)


def validate_id(product_id: str, *, field_name: str = "id") -> str:
    if not product_id:
        raise InvalidArgument(f"{field_name} is required")
    if not _ID.fullmatch(product_id):
        raise InvalidArgument(
            f"{field_name} {product_id[:140]!r} is not valid: 1-128 letters, digits, '.', '_'"
            " or '-', starting with a letter or digit")
    return product_id


def validate_new_product(
    *, product_id: str, name: str, description: str, category: str, price_cents: int,
    currency: str, new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
) -> Product:
    """A product ready to store; an empty id gets a generated one."""
    pid = validate_id(product_id.strip()) if product_id.strip() else new_id()
    clean_name = " ".join(name.split())
    if not clean_name:
        raise InvalidArgument("name is required")
    if len(clean_name) > MAX_NAME_LEN:
        raise InvalidArgument(f"name is longer than {MAX_NAME_LEN} characters")
    clean_description = description.strip()
    if len(clean_description) > MAX_DESCRIPTION_LEN:
        raise InvalidArgument(f"description is longer than {MAX_DESCRIPTION_LEN} characters")
    clean_category = category.strip().lower()
    if len(clean_category) > MAX_CATEGORY_LEN:
        raise InvalidArgument(f"category is longer than {MAX_CATEGORY_LEN} characters")
    # Zero is refused: a free product could never be paid for (payments are positive).
    if price_cents <= 0:
        raise InvalidArgument("price_cents must be positive")
    if price_cents > MAX_PRICE_CENTS:
        raise InvalidArgument(f"price_cents must be at most {MAX_PRICE_CENTS}")
    code = currency.strip().upper() or DEFAULT_CURRENCY
    if not _CURRENCY.fullmatch(code):
        raise InvalidArgument(f"currency {currency[:10]!r} is not a 3-letter ISO 4217 code")
    return Product(pid, clean_name, clean_description, clean_category, price_cents, code)


# --- listing ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListQuery:
    page_size: int
    query: str  # casefolded, "" = everything
    category: str  # "" = every category
    after: SortKey | None  # the last sort key of the previous page

    @property
    def fingerprint(self) -> str:
        return query_fingerprint(self.query, self.category)


def normalize_page_size(raw: int) -> int:
    if raw < 0:
        raise InvalidArgument("page_size must not be negative")
    if raw == 0:
        return DEFAULT_PAGE_SIZE
    return min(raw, MAX_PAGE_SIZE)  # larger asks are served the maximum (AIP-158)


def query_fingerprint(query: str, category: str) -> str:
    data = json.dumps([query, category], separators=(",", ":")).encode("utf-8")
    return hashlib.sha256(data).hexdigest()[:16]


def encode_page_token(after: SortKey, fingerprint: str) -> str:
    data = json.dumps({"k": list(after), "q": fingerprint}, separators=(",", ":"))
    return base64.urlsafe_b64encode(data.encode("utf-8")).decode("ascii").rstrip("=")


def decode_page_token(token: str, fingerprint: str) -> SortKey:
    """The sort key a token continues after; InvalidArgument for a forged, damaged or
    foreign token (one made for another query)."""
    bad = InvalidArgument("page_token is not valid")
    if len(token) > MAX_TOKEN_LEN:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw.decode("utf-8"))
    except (binascii.Error, ValueError):
        raise bad from None
    if not isinstance(data, dict):
        raise bad
    key, fp = data.get("k"), data.get("q")
    if (not isinstance(key, list) or len(key) != 2
            or not all(isinstance(part, str) for part in key) or not isinstance(fp, str)):
        raise bad
    if fp != fingerprint:
        raise InvalidArgument("page_token belongs to a different query or category")
    return (key[0], key[1])


def parse_list_request(page_size: int, page_token: str, query: str,
                       category: str) -> ListQuery:
    size = normalize_page_size(page_size)
    q = query.strip().casefold()
    if len(q) > MAX_QUERY_LEN:
        raise InvalidArgument(f"query is longer than {MAX_QUERY_LEN} characters")
    cat = category.strip().lower()
    if len(cat) > MAX_CATEGORY_LEN:
        raise InvalidArgument(f"category is longer than {MAX_CATEGORY_LEN} characters")
    after = decode_page_token(page_token, query_fingerprint(q, cat)) if page_token else None
    return ListQuery(size, q, cat, after)


def validate_batch(ids: Sequence[str]) -> list[str]:
    if len(ids) > MAX_BATCH:
        raise InvalidArgument(f"at most {MAX_BATCH} ids per batch, got {len(ids)}")
    for pid in ids:
        validate_id(pid, field_name="ids")
    return list(ids)


def not_found_message(missing: Iterable[str]) -> str:
    names = list(dict.fromkeys(missing))  # each once, in request order
    if len(names) == 1:
        return f"product {names[0]} not found"
    return "products not found: " + ", ".join(names)


@dataclass(slots=True)
class _Entry:
    key: SortKey
    product: Product
    haystack: str  # casefolded name, description and category, searched by `query`


def _entry(p: Product) -> _Entry:
    text = "\n".join((p.name, p.description, p.category)).casefold()
    return _Entry(sort_key(p), p, text)


@dataclass
class Catalogue:
    """Every product, by id and in listing order. Not thread-safe; one event loop owns it."""

    _by_id: dict[str, Product] = field(default_factory=dict)
    _keys: list[SortKey] = field(default_factory=list)
    _entries: list[_Entry] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self._by_id)

    def get(self, product_id: str) -> Product | None:
        return self._by_id.get(product_id)

    def add(self, product: Product) -> bool:
        """False (and no change) when the id is already there."""
        if product.id in self._by_id:
            return False
        entry = _entry(product)
        at = bisect.bisect_left(self._keys, entry.key)
        self._keys.insert(at, entry.key)
        self._entries.insert(at, entry)
        self._by_id[product.id] = product
        return True

    def page(self, q: ListQuery) -> tuple[list[Product], str]:
        """One page and the token of the next ("" on the last page)."""
        start = 0 if q.after is None else bisect.bisect_right(self._keys, q.after)
        found: list[Product] = []
        last: SortKey | None = None
        more = False
        for entry in self._entries[start:]:
            if q.category and entry.product.category != q.category:
                continue
            if q.query and q.query not in entry.haystack:
                continue
            if len(found) == q.page_size:
                more = True  # one match beyond the page: there is a next page
                break
            found.append(entry.product)
            last = entry.key
        token = encode_page_token(last, q.fingerprint) if more and last is not None else ""
        return found, token

    def split(self, ids: Sequence[str]) -> tuple[dict[str, Product], list[str]]:
        """(known products by id, unknown ids in request order)."""
        known: dict[str, Product] = {}
        missing: list[str] = []
        for pid in ids:
            p = self._by_id.get(pid)
            if p is None:
                missing.append(pid)
            else:
                known[pid] = p
        return known, missing
