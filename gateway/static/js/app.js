// The storefront: a hash router over small views, on the public REST API only.
import { get } from './api.js';
import * as cart from './cart.js';
import { session } from './session.js';
import { clearError, mount, el, showError } from './ui.js';
import { catalogueView } from './views/catalogue.js';
import { productView } from './views/product.js';
import { loginView, registerView } from './views/account.js';
import { cartView } from './views/cartview.js';
import { ordersView, orderView } from './views/orders.js';
import { notificationsView } from './views/notifications.js';

const UNREAD_EVERY_MS = 10000;
let cleanup = null;
let pending = {};
let routed = false;

function go(hash, state = {}) {
  pending = state;
  if (window.location.hash === hash) route();
  else window.location.hash = hash;
}

function needLogin(view) {
  return (params, ...rest) => {
    if (!session.loggedIn()) {
      go(`#/login?next=${encodeURIComponent(window.location.hash)}`, { flash: 'Please log in first.' });
      return undefined;
    }
    return view(params, ...rest);
  };
}

const routes = [
  [/^#\/?$/, (m, p) => catalogueView(p, go)],
  [/^#\/product\/(.+)$/, (m) => productView(decodeURIComponent(m[1]), go)],
  [/^#\/login$/, (m, p) => loginView(p, go)],
  [/^#\/register$/, (m, p) => registerView(p, go)],
  [/^#\/cart$/, needLogin((m, p) => cartView(p, go))],
  [/^#\/orders$/, needLogin(() => ordersView())],
  [/^#\/orders\/(.+)$/, needLogin((m, p, s) => orderView(decodeURIComponent(m[1]), go, s))],
  [/^#\/notifications$/, needLogin((m, p, s) => notificationsView(p, go, s, refreshUnread))],
];

async function route() {
  const state = pending;
  pending = {};
  if (cleanup) { cleanup(); cleanup = null; }
  clearError();
  refreshUnread();
  const [path, query] = (window.location.hash || '#/').split('?');
  const params = new URLSearchParams(query || '');
  const found = routes.find(([re]) => re.test(path));
  try {
    if (!found) {
      mount(el('h1', {}, 'Not found'), el('p', {}, 'There is no such page. ', el('a', { href: '#/' }, 'Go to the catalogue')));
      return;
    }
    const m = path.match(found[0]);
    if (state.flash && !path.startsWith('#/orders/')) showError(state.flash);
    const result = await found[1](m, params, state);
    if (typeof result === 'function') cleanup = result;
    // After a navigation, not on the first load: keyboard users land on the new content.
    if (routed) document.getElementById('main').focus({ preventScroll: true });
    routed = true;
  } catch (err) {
    mount(el('h1', {}, 'Something went wrong'), el('p', {}, err.message || String(err)),
      el('p', {}, el('a', { href: '#/' }, 'Back to the catalogue')));
  }
}

async function refreshUnread() {
  if (!session.loggedIn()) return;
  try {
    const r = await get('/api/notifications:countUnread');
    document.getElementById('unread-count').textContent = String(r.count || 0);
  } catch { /* the count waits for the next round */ }
}

function header() {
  const inside = session.loggedIn();
  document.querySelectorAll('[data-auth]').forEach((n) => {
    const want = n.dataset.auth;
    n.hidden = want === 'in' ? !inside : want === 'out' ? inside : !session.isAdmin();
  });
  document.getElementById('who').textContent = inside ? `Logged in as ${session.email()}` : 'Not logged in';
  if (inside) {
    refreshUnread();
    cart.load().catch(() => {});
  } else {
    document.getElementById('cart-count').textContent = '0';
  }
}

cart.onCart((c) => { document.getElementById('cart-count').textContent = String(cart.count(c)); });
session.onChange(header);

document.getElementById('search').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const q = String(new FormData(ev.target).get('q') || '').trim();
  go(q ? `#/?q=${encodeURIComponent(q)}` : '#/');
});
document.getElementById('logout').addEventListener('click', () => {
  session.clear();
  go('#/');
});
document.querySelector('.skip').addEventListener('click', (ev) => {
  ev.preventDefault(); // "#main" is not a route
  document.getElementById('main').focus();
});
window.addEventListener('hashchange', route);
window.addEventListener('shop:order-changed', () => setTimeout(refreshUnread, 1000));
window.addEventListener('unhandledrejection', (ev) => { showError(ev.reason?.message || 'Something went wrong.'); });
setInterval(refreshUnread, UNREAD_EVERY_MS);
header();
route();
