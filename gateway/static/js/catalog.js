// Products by id, fetched once per page load (names and prices for the cart and orders).
import { get } from './api.js';

const known = new Map();

export function remember(products) {
  for (const p of products) known.set(p.id, p);
}

export async function product(id) {
  if (known.has(id)) return known.get(id);
  const p = await get(`/api/products/${encodeURIComponent(id)}`);
  known.set(id, p);
  return p;
}

export async function products(ids) {
  const out = await Promise.all(ids.map((id) => product(id).catch(() => null)));
  return new Map(ids.map((id, i) => [id, out[i]]));
}

let categoryList = null;
export async function categories() {
  if (categoryList) return categoryList;
  const names = new Set();
  let token = '';
  for (let i = 0; i < 10; i += 1) { // a dozen demo products: one page; bounded anyway
    const page = await get(`/api/products?pageSize=100${token ? `&pageToken=${encodeURIComponent(token)}` : ''}`);
    remember(page.products);
    page.products.forEach((p) => p.category && names.add(p.category));
    token = page.nextPageToken;
    if (!token) break;
  }
  categoryList = [...names].sort();
  return categoryList;
}
