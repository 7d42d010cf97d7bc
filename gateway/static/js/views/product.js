import { get } from '../api.js';
import { product } from '../catalog.js';
import * as cart from '../cart.js';
import { session } from '../session.js';
import { el, field, money, mount, showError, announce } from '../ui.js';

const STOCK_EVERY_MS = 5000;

export async function productView(id, go) {
  const p = await product(id);
  const stock = el('p', { class: 'stock', 'aria-live': 'polite' }, 'Checking stock…');
  const qty = el('input', { type: 'number', min: '1', max: '99', value: '1', name: 'quantity', inputmode: 'numeric' });
  const button = el('button', { type: 'submit' }, 'Add to cart');
  const form = el('form', {
    class: 'inline',
    async onsubmit(ev) {
      ev.preventDefault();
      if (!session.loggedIn()) {
        go('#/login', { flash: 'Log in or register to fill a cart.' });
        return;
      }
      const n = Number(qty.value);
      if (!Number.isInteger(n) || n < 1 || n > 99) {
        showError('Choose a quantity from 1 to 99.');
        return;
      }
      button.disabled = true;
      try {
        await cart.add(p.id, n);
        announce(`${n} × ${p.name} added to the cart`);
        button.textContent = 'Added ✓';
      } catch (err) {
        showError(err.message);
      } finally {
        button.disabled = false;
      }
    },
  }, field('Quantity', qty), button);

  async function refresh() {
    try {
      const s = await get(`/api/inventory/${encodeURIComponent(p.id)}`);
      const n = Number(s.available);
      stock.textContent = n > 0 ? `In stock: ${n} available` : 'Out of stock';
      stock.className = n > 0 ? 'stock' : 'stock out';
    } catch (err) {
      stock.textContent = `Stock unknown: ${err.message}`;
    }
  }
  await refresh();
  const timer = setInterval(refresh, STOCK_EVERY_MS);

  mount(
    el('p', {}, el('a', { href: '#/' }, '← Catalogue')),
    el('article', { class: 'product' },
      el('h1', {}, p.name),
      el('p', { class: 'muted' }, p.category),
      el('p', {}, p.description),
      el('p', { class: 'price big' }, money(p.priceCents, p.currency)),
      stock,
      form),
  );
  return () => clearInterval(timer);
}
