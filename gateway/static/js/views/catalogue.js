import { get } from '../api.js';
import { categories, remember } from '../catalog.js';
import * as cart from '../cart.js';
import { session } from '../session.js';
import { el, field, money, mount, showError, announce } from '../ui.js';

const PAGE_SIZE = 6;

export function addButton(p, go) {
  return el('button', {
    type: 'button',
    class: 'add',
    'aria-label': `Add ${p.name} to cart`,
    async onclick(ev) {
      if (!session.loggedIn()) {
        go('#/login', { flash: 'Log in or register to fill a cart.' });
        return;
      }
      ev.target.disabled = true;
      try {
        await cart.add(p.id, 1);
        announce(`${p.name} added to the cart`);
        ev.target.textContent = 'Added ✓';
      } catch (err) {
        showError(err.message);
      } finally {
        ev.target.disabled = false;
      }
    },
  }, 'Add to cart');
}

export async function catalogueView(params, go) {
  const query = params.get('q') || '';
  const category = params.get('category') || '';
  const tokens = (params.get('pages') || '').split(',').filter(Boolean); // tokens of earlier pages
  const pageToken = params.get('page') || '';
  document.getElementById('q').value = query;

  const qs = new URLSearchParams({ pageSize: String(PAGE_SIZE) });
  if (query) qs.set('query', query);
  if (category) qs.set('category', category);
  if (pageToken) qs.set('pageToken', pageToken);
  const [page, cats] = await Promise.all([get(`/api/products?${qs}`), categories().catch(() => [])]);
  remember(page.products);

  const link = (extra) => {
    const p = new URLSearchParams();
    if (query) p.set('q', query);
    if (category) p.set('category', category);
    Object.entries(extra).forEach(([k, v]) => v && p.set(k, v));
    const s = p.toString();
    return `#/${s ? `?${s}` : ''}`;
  };

  const select = el('select', {
    name: 'category',
    onchange(ev) {
      const p = new URLSearchParams();
      if (query) p.set('q', query);
      if (ev.target.value) p.set('category', ev.target.value);
      go(`#/?${p}`);
    },
  }, el('option', { value: '', text: 'All categories' }),
  cats.map((c) => el('option', { value: c, selected: c === category, text: c })));

  const heading = query ? `Results for “${query}”` : (category ? `Category: ${category}` : 'Catalogue');
  const list = page.products.length
    ? el('ul', { class: 'grid', 'aria-label': 'Products' }, page.products.map((p) => el('li', { class: 'card' },
      el('h3', {}, el('a', { href: `#/product/${encodeURIComponent(p.id)}` }, p.name)),
      el('p', { class: 'muted' }, p.category),
      el('p', { class: 'price' }, money(p.priceCents, p.currency)),
      addButton(p, go))))
    : el('p', { class: 'empty' }, 'No products match. Try another search or category.');

  const prevTokens = tokens.slice(0, -1).join(',');
  const pager = el('nav', { class: 'pager', 'aria-label': 'Pages' },
    pageToken ? el('a', { href: link({ page: tokens[tokens.length - 1] === '-' ? '' : tokens[tokens.length - 1], pages: prevTokens }), rel: 'prev' }, '← Previous') : null,
    el('span', { class: 'muted' }, `Page ${tokens.length + 1}`),
    page.nextPageToken ? el('a', { href: link({ page: page.nextPageToken, pages: [...tokens, pageToken || '-'].join(',') }), rel: 'next' }, 'Next →') : null);

  mount(el('h1', {}, heading), field('Category', select), list, pager);
}
