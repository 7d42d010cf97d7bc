import { post } from '../api.js';
import { products } from '../catalog.js';
import * as cart from '../cart.js';
import { el, field, money, mount, showError, clearError, announce, uuid } from '../ui.js';

const CARDS = [
  ['tok_visa', 'Visa test card (payment succeeds)'],
  ['tok_chargeDeclined', 'Test card that is declined'],
];

// "order 3f2a… cancelled: payment declined" -> "3f2a…"
const orderIdIn = (message) => (/order ([0-9a-zA-Z-]+) (cancelled|requires attention)/.exec(message || '') || [])[1];

export async function cartView(params, go) {
  const c = await cart.load();
  const items = c.items || [];
  if (!items.length) {
    mount(el('h1', {}, 'Your cart'), el('p', { class: 'empty' }, 'Your cart is empty. ', el('a', { href: '#/' }, 'Browse the catalogue')));
    return;
  }
  const names = await products(items.map((i) => i.productId));
  const rows = items.map((i) => {
    const p = names.get(i.productId);
    const name = p ? p.name : i.productId;
    const qty = el('input', {
      type: 'number', min: '0', max: '99', value: String(i.quantity), name: `qty-${i.productId}`, inputmode: 'numeric',
      async onchange(ev) {
        const n = Number(ev.target.value);
        if (!Number.isInteger(n) || n < 0 || n > 99) {
          showError('Choose a quantity from 0 to 99.');
          return;
        }
        try {
          await cart.setQuantity(i.productId, n, Number(i.quantity));
          announce(`Quantity of ${name} set to ${n}`);
          await cartView(params, go);
        } catch (err) {
          showError(err.message);
        }
      },
    });
    return el('tr', { 'data-product': i.productId },
      el('th', { scope: 'row' }, el('a', { href: `#/product/${encodeURIComponent(i.productId)}` }, name)),
      el('td', {}, field(`Quantity of ${name}`, qty)),
      el('td', { class: 'num' }, money(Number(i.unitPriceCents) * Number(i.quantity), c.currency)),
      el('td', {}, el('button', {
        type: 'button', class: 'link', 'aria-label': `Remove ${name}`,
        async onclick() {
          try {
            await cart.remove(i.productId);
            announce(`${name} removed`);
            await cartView(params, go);
          } catch (err) {
            showError(err.message);
          }
        },
      }, 'Remove')));
  });

  // One key per checkout attempt: a double click, or a retry after a lost answer, orders once.
  let key = uuid();
  const pay = el('button', { type: 'submit', id: 'place-order' }, 'Place order');
  const checkout = el('form', {
    class: 'stack',
    'aria-label': 'Checkout',
    async onsubmit(ev) {
      ev.preventDefault();
      if (pay.disabled) return;
      clearError();
      pay.disabled = true;
      pay.textContent = 'Placing order…';
      const cardToken = new FormData(ev.target).get('card');
      try {
        const order = await post('/api/orders', { cardToken, idempotencyKey: key });
        await cart.load();
        go(`#/orders/${encodeURIComponent(order.id)}`, { seen: order.status });
      } catch (err) {
        const id = orderIdIn(err.detail);
        // A refusal settles the attempt: the next one is a new order. A lost answer or an
        // outage may have placed it: trying again with the same key gets that order back.
        if (err.status >= 400 && err.status < 500 && err.status !== 429) key = uuid();
        if (id) {
          go(`#/orders/${encodeURIComponent(id)}`, { flash: err.message });
        } else {
          showError(err.message);
          pay.disabled = false;
          pay.textContent = 'Place order';
        }
      }
    },
  },
  el('fieldset', {}, el('legend', {}, 'Card'),
    CARDS.map(([value, label], n) => el('label', { class: 'radio' },
      el('input', { type: 'radio', name: 'card', value, checked: n === 0 }), ' ', label))),
  pay);

  mount(
    el('h1', {}, 'Your cart'),
    el('table', { class: 'cart' },
      el('thead', {}, el('tr', {}, el('th', { scope: 'col' }, 'Product'), el('th', { scope: 'col' }, 'Quantity'),
        el('th', { scope: 'col', class: 'num' }, 'Price'), el('th', { scope: 'col' }, el('span', { class: 'sr-only' }, 'Actions')))),
      el('tbody', {}, rows),
      el('tfoot', {}, el('tr', {}, el('th', { scope: 'row', colspan: '2' }, 'Total'),
        el('td', { class: 'num', id: 'cart-total' }, money(c.totalCents, c.currency)), el('td')))),
    el('h2', {}, 'Checkout'),
    checkout,
  );
}
