"""The storefront in Chromium: a shopper's whole path, refusals in words, a phone screen."""

from __future__ import annotations

import re
import time
from typing import Any

from playwright.sync_api import expect

from tests.browser.conftest import WAIT_MS, rest

FIRST_LOAD_BUDGET = 150 * 1024


def register_in_browser(tab: Any, shot: str = "") -> str:
    email = f"b-{time.time_ns()}@example.com"
    tab.goto("/#/register")
    page = tab.page
    if shot:
        page.get_by_role("heading", name="Create an account").wait_for()
        tab.shot(shot)
    page.get_by_label("Name").fill("Browser Shopper")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password (at least 8 characters)").fill("correct-horse-1")
    page.get_by_role("button", name="Register").click()
    expect(page.get_by_text(f"Logged in as {email}")).to_be_visible()
    return email


def search_and_add(page: Any, query: str, product: str) -> None:
    page.get_by_label("Search products").fill(query)
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("heading", name=f"Results for “{query}”")).to_be_visible()
    page.get_by_role("button", name=f"Add {product} to cart").click()
    expect(page.get_by_role("button", name=f"Add {product} to cart")).to_have_text("Added ✓")


def checkout(page: Any, card_label: str) -> None:
    page.get_by_role("link", name=re.compile(r"^Cart")).click()
    page.get_by_label(card_label).check()
    page.get_by_role("button", name="Place order").click()


def test_a_shopper_registers_searches_orders_two_products_and_sees_them_ship(
        new_tab: Any, base_url: str) -> None:
    tab = new_tab()
    page = tab.page
    register_in_browser(tab)
    expect(page.get_by_role("list", name="Products").get_by_role("listitem").first).to_be_visible()
    tab.shot("storefront-catalogue")

    search_and_add(page, "coffee", "Burr Coffee Grinder")
    search_and_add(page, "press", "French Press")
    expect(page.locator("#cart-count")).to_have_text("2")

    page.get_by_role("link", name=re.compile(r"^Cart")).click()
    expect(page.locator("#cart-total")).to_have_text("$118.99")  # 89.00 + 29.99
    # Change a quantity and remove a line, then put it back: the total follows.
    page.get_by_label("Quantity of French Press").fill("3")
    page.get_by_label("Quantity of French Press").press("Enter")
    expect(page.locator("#cart-total")).to_have_text("$178.97")
    page.get_by_role("button", name="Remove French Press").click()
    expect(page.locator("#cart-total")).to_have_text("$89.00")
    search_and_add(page, "press", "French Press")
    page.get_by_role("link", name=re.compile(r"^Cart")).click()
    expect(page.locator("#cart-total")).to_have_text("$118.99")
    tab.shot("storefront-cart")

    page.get_by_label("Visa test card (payment succeeds)").check()
    # A double click orders once: the button is disabled and the idempotency key reused.
    page.get_by_role("button", name="Place order").dblclick()
    status = page.locator("#order-status")
    expect(status).to_have_text(re.compile("CONFIRMED|SHIPPED"), timeout=WAIT_MS)
    expect(page.locator("#tracking")).to_contain_text("Tracking number", timeout=WAIT_MS)
    tab.shot("storefront-order-confirmed")
    expect(status).to_have_text("SHIPPED", timeout=WAIT_MS)
    expect(page.locator("#status-trail")).to_contain_text("CONFIRMED → SHIPPED")
    expect(page.get_by_role("button", name="Cancel order")).to_be_hidden()
    tab.shot("storefront-order-shipped")

    token = page.evaluate("sessionStorage.getItem('shop.token')")
    _, orders = rest(base_url, "GET", "/api/orders", token=token)
    assert len(orders["orders"]) == 1
    assert orders["orders"][0]["status"] == "ORDER_STATUS_SHIPPED"
    assert {i["productId"] for i in orders["orders"][0]["items"]} == {"coffee-grinder",
                                                                      "french-press"}
    expect(page.locator("#cart-count")).to_have_text("0", timeout=WAIT_MS)


def test_a_declined_card_shows_the_reason_and_the_order_cancelled(new_tab: Any) -> None:
    tab = new_tab()
    # Chromium logs every 4xx answer to fetch; the refused order is one, and only that.
    tab.expected = ["status of 400 (Bad Request)"]
    page = tab.page
    register_in_browser(tab)
    search_and_add(page, "yoga", "Yoga Mat")
    checkout(page, "Test card that is declined")
    expect(page.get_by_role("alert")).to_contain_text("Your card was declined")
    expect(page.locator("#order-status")).to_have_text("CANCELLED")
    expect(page.locator("#cancel-reason")).to_contain_text("declined")
    expect(page.get_by_role("button", name="Cancel order")).to_be_hidden()
    tab.shot("storefront-order-declined")


def test_the_product_page_shows_price_and_live_stock(new_tab: Any, base_url: str) -> None:
    tab = new_tab()
    tab.goto("/#/product/chef-knife")
    page = tab.page
    expect(page.get_by_role("heading", name="Chef's Knife")).to_be_visible()
    expect(page.locator(".price")).to_have_text("$59.00")
    _, stock = rest(base_url, "GET", "/api/inventory/chef-knife")
    expect(page.locator(".stock")).to_have_text(f"In stock: {stock['available']} available")
    # Anonymous: adding asks for a login, in words.
    page.get_by_role("button", name="Add to cart").click()
    expect(page.get_by_role("alert")).to_contain_text("Log in or register")
    tab.shot("storefront-product")


def test_the_catalogue_filters_by_category_and_pages(new_tab: Any) -> None:
    tab = new_tab()
    tab.goto("/")
    page = tab.page
    products = page.get_by_role("list", name="Products").get_by_role("listitem")
    first = products.first.get_by_role("heading")
    expect(first).to_be_visible()
    first_name = first.inner_text()
    page.get_by_role("link", name="Next →").click()
    expect(page.get_by_text("Page 2")).to_be_visible()
    expect(first).not_to_have_text(first_name)
    page.get_by_role("link", name="← Previous").click()
    expect(page.get_by_text("Page 1")).to_be_visible()
    expect(first).to_have_text(first_name)
    page.get_by_label("Category").select_option("sports")
    expect(page.get_by_role("heading", name="Category: sports")).to_be_visible()
    for text in products.all_inner_texts():
        assert "sports" in text


def test_notifications_appear_and_can_be_marked_read(new_tab: Any) -> None:
    tab = new_tab()
    page = tab.page
    register_in_browser(tab)
    page.get_by_role("link", name=re.compile("^Notifications")).click()
    welcome = page.locator("#notifications li[data-kind=WELCOME]")
    expect(welcome).to_have_count(1, timeout=WAIT_MS)
    expect(welcome).to_have_class("unread")
    expect(page.locator("#unread-count")).not_to_have_text("0", timeout=WAIT_MS)
    before = int(page.locator("#unread-count").inner_text())
    tab.shot("storefront-notifications")
    welcome.get_by_role("button", name=re.compile("^Mark")).click()
    expect(welcome).to_have_class("read")
    expect(page.locator("#unread-count")).to_have_text(str(before - 1))
    # Logging out forgets the token, here and in the console's cookie.
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_text("Not logged in")).to_be_visible()
    expect(page.get_by_role("link", name="Log in")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('shop.token')") is None
    assert "shop_token" not in {c["name"] for c in page.context.cookies()}


def test_a_confirmed_order_can_be_cancelled_before_dispatch(new_tab: Any) -> None:
    tab = new_tab()
    page = tab.page
    register_in_browser(tab)
    search_and_add(page, "bottle", "Water Bottle")
    checkout(page, "Visa test card (payment succeeds)")
    expect(page.locator("#order-status")).to_have_text("CONFIRMED")
    page.get_by_role("button", name="Cancel order").click()
    expect(page.locator("#order-status")).to_have_text("CANCELLED")
    expect(page.locator("#status-trail")).to_contain_text("CONFIRMED → CANCELLED")
    tab.shot("storefront-order-cancelled")


def test_the_pages_work_375_px_wide(new_tab: Any) -> None:
    tab = new_tab(width=375, height=740)
    page = tab.page
    register_in_browser(tab, shot="storefront-phone-register")
    search_and_add(page, "knife", "Chef's Knife")
    page.get_by_role("link", name=re.compile(r"^Cart")).click()
    expect(page.get_by_role("button", name="Place order")).to_be_visible()
    tab.shot("storefront-phone-cart")
    for path in ("/#/", "/#/product/espresso-machine", "/#/cart", "/#/notifications"):
        tab.goto(path)
        page.locator("main h1").first.wait_for()
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= 375, f"{path} scrolls sideways at 375 px: {width} px wide"
    tab.goto("/")
    page.locator("main h1").first.wait_for()
    tab.shot("storefront-phone-catalogue")


def test_the_keyboard_reaches_search_and_the_cart(new_tab: Any) -> None:
    tab = new_tab()
    page = tab.page
    tab.goto("/")
    expect(page.get_by_role("list", name="Products")).to_be_visible()
    page.keyboard.press("Tab")  # the skip link
    expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    page.keyboard.press("Tab")  # the brand
    page.keyboard.press("Tab")
    expect(page.get_by_label("Search products")).to_be_focused()
    page.keyboard.type("grinder")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Results for “grinder”")).to_be_visible()


def test_first_load_is_under_150_kb_with_csp_and_cache_headers(
        new_tab: Any, base_url: str) -> None:
    tab = new_tab()
    page = tab.page
    sizes: list[tuple[str, int]] = []
    headers: dict[str, dict[str, str]] = {}

    def on_finished(request: Any) -> None:
        s = request.sizes()
        sizes.append((request.url, s["responseBodySize"] + s["responseHeadersSize"]))
        response = request.response()
        if response is not None:
            headers[request.url] = response.all_headers()

    page.on("requestfinished", on_finished)
    tab.goto("/")
    expect(page.get_by_role("list", name="Products").get_by_role("listitem").first).to_be_visible()
    page.wait_for_load_state("networkidle")
    total = sum(n for _, n in sizes)
    print(f"\nstorefront first load: {total} bytes transferred in {len(sizes)} requests")
    assert total < FIRST_LOAD_BUDGET, sorted(sizes, key=lambda s: -s[1])
    page_headers = headers[base_url + "/"]
    assert "unsafe-inline" not in page_headers["content-security-policy"]
    assert "script-src 'self'" in page_headers["content-security-policy"]
    assert page_headers["cache-control"] == "no-cache"
    app_js = headers[base_url + "/static/js/app.js"]
    assert "max-age=" in app_js["cache-control"]
    assert app_js["etag"]


def test_too_little_stock_is_said_in_words(new_tab: Any, base_url: str) -> None:
    _, stock = rest(base_url, "GET", "/api/inventory/running-shoes")
    wanted = int(stock["available"]) + 1
    assert wanted <= 99, "the demo stock grew past what one cart line can hold"
    tab = new_tab()
    tab.expected = ["status of 400 (Bad Request)"]  # the refused order
    page = tab.page
    register_in_browser(tab)
    tab.goto("/#/product/running-shoes")
    page.get_by_label("Quantity").fill(str(wanted))
    page.get_by_role("button", name="Add to cart").click()
    expect(page.get_by_role("button", name="Added ✓")).to_be_visible()
    checkout(page, "Visa test card (payment succeeds)")
    expect(page.get_by_role("alert")).to_contain_text("not enough stock")
    expect(page.locator("#order-status")).to_have_text("CANCELLED")
    tab.shot("storefront-order-out-of-stock")


def test_refusals_read_as_sentences(new_tab: Any) -> None:
    """The words for answers a live run rarely gives (rate limit, outage), from the
    storefront's own module in the page."""
    tab = new_tab()
    tab.goto("/")
    tab.page.get_by_role("list", name="Products").wait_for()
    said = tab.page.evaluate("""async () => {
        const { describe } = await import('/static/js/api.js');
        return [describe(429, 'RESOURCE_EXHAUSTED', 'rate limit exceeded', '3'),
                describe(503, 'UNAVAILABLE', 'payment unavailable: circuit open'),
                describe(0), describe(400, 'INVALID_ARGUMENT', 'quantity must be positive')];
    }""")
    assert said == [
        "Too many requests right now. Please wait 3 seconds and try again.",
        "The shop is having trouble right now. Please try again in a moment.",
        "The shop cannot be reached. Check your connection and try again.",
        "Quantity must be positive.",
    ]


def test_a_lost_answer_then_a_second_click_orders_once(new_tab: Any, base_url: str) -> None:
    tab = new_tab()
    tab.expected = ["net::ERR_FAILED"]  # the answer this test throws away
    page = tab.page
    register_in_browser(tab)
    search_and_add(page, "charger", "USB-C Charger")
    page.get_by_role("link", name=re.compile(r"^Cart")).click()
    lost: list[int] = []

    def lose_the_first_answer(route: Any) -> None:
        if lost:
            route.continue_()
            return
        lost.append(route.fetch().status)  # the order reaches the shop...
        route.abort()  # ...and its answer never reaches the browser

    page.route("**/api/orders", lose_the_first_answer)
    page.get_by_role("button", name="Place order").click()
    expect(page.get_by_role("alert")).to_contain_text("cannot be reached")
    page.get_by_role("button", name="Place order").click()
    expect(page.locator("#order-status")).to_have_text(re.compile("^(CONFIRMED|SHIPPED)$"))
    assert lost == [201]
    token = page.evaluate("sessionStorage.getItem('shop.token')")
    _, orders = rest(base_url, "GET", "/api/orders", token=token)
    assert len(orders["orders"]) == 1, orders
