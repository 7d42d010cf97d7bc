// The caller's cart on the server, and the count shown in the header.
import { get, post, del } from './api.js';
import { session } from './session.js';

const listeners = new Set();

export function onCart(fn) { listeners.add(fn); }

function changed(cart) {
  listeners.forEach((fn) => fn(cart));
  return cart;
}

export async function load() {
  if (!session.loggedIn()) return changed({ items: [], totalCents: '0', currency: 'USD' });
  return changed(await get('/api/cart'));
}

export async function add(productId, quantity = 1) {
  return changed(await post('/api/cart/items', { productId, quantity }));
}

export async function remove(productId) {
  return changed(await del(`/api/cart/items/${encodeURIComponent(productId)}`));
}

// The API raises a quantity (AddItem) or removes a line: a new quantity is one of those,
// or a removal followed by an add.
export async function setQuantity(productId, quantity, current) {
  if (quantity === current) return load();
  if (quantity <= 0) return remove(productId);
  if (quantity > current) return add(productId, quantity - current);
  await del(`/api/cart/items/${encodeURIComponent(productId)}`);
  return add(productId, quantity);
}

export const count = (cart) => (cart.items || []).reduce((n, i) => n + Number(i.quantity), 0);
