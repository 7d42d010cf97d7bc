import { get, post } from '../api.js';
import { products } from '../catalog.js';
import * as cart from '../cart.js';
import { el, money, mount, showError, clearError, announce, shortStatus, when } from '../ui.js';

const FINAL = new Set(['SHIPPED', 'CANCELLED', 'REQUIRES_ATTENTION']);

export async function ordersView() {
  const page = await get('/api/orders?pageSize=20');
  const orders = page.orders || [];
  mount(el('h1', {}, 'Your orders'), orders.length
    ? el('ul', { class: 'list' }, orders.map((o) => el('li', {},
      el('a', { href: `#/orders/${encodeURIComponent(o.id)}` }, `Order ${o.id.slice(0, 8)}`),
      ' · ', when(o.createTime), ' · ', money(o.totalCents, o.currency), ' · ',
      el('span', { class: `status s-${shortStatus(o.status).toLowerCase()}` }, shortStatus(o.status)))))
    : el('p', { class: 'empty' }, 'No orders yet.'));
}

// The order page follows the order by polling with back-off (0.5 s growing to 5 s) until
// it is shipped or cancelled and the shipment is known; leaving the page stops it.
export async function orderView(id, go, state = {}) {
  const path = `/api/orders/${encodeURIComponent(id)}`;
  let order = await get(path);
  const trail = [];
  const seen = (s) => {
    if (!s || trail[trail.length - 1] === s) return;
    trail.push(s);
    window.dispatchEvent(new Event('shop:order-changed')); // notifications follow a change
  };
  if (state.seen) seen(shortStatus(state.seen));
  seen(shortStatus(order.status));

  const names = await products(order.items.map((i) => i.productId));
  const status = el('strong', { id: 'order-status', class: 'status' });
  const trailEl = el('p', { id: 'status-trail', class: 'muted' });
  const reason = el('p', { id: 'cancel-reason' });
  const tracking = el('p', { id: 'tracking' });
  const cancel = el('button', {
    type: 'button', id: 'cancel-order', class: 'danger',
    async onclick() {
      cancel.disabled = true;
      clearError();
      try {
        order = await post(`${path}/cancel`, {});
        render();
        announce('Order cancelled');
      } catch (err) {
        showError(err.status === 400 ? `This order can no longer be cancelled: ${err.detail || err.message}` : err.message);
        await poll();
      } finally {
        cancel.disabled = false;
      }
    },
  }, 'Cancel order');
  let shipment = null;

  function render() {
    const s = shortStatus(order.status);
    seen(s);
    status.textContent = s;
    status.className = `status s-${s.toLowerCase()}`;
    trailEl.textContent = `Status so far: ${trail.join(' → ')}`;
    reason.textContent = order.cancelReason ? `Reason: ${order.cancelReason}` : '';
    const shipped = shipment && shortStatus(shipment.status) === 'SHIPPED';
    tracking.textContent = shipment
      ? `Tracking number: ${shipment.trackingNumber} (${shortStatus(shipment.status).toLowerCase()})`
      : (s === 'CONFIRMED' ? 'Preparing the shipment…' : '');
    cancel.hidden = !(s === 'PENDING' || (s === 'CONFIRMED' && !shipped));
  }

  async function poll() {
    try {
      order = await get(path);
      if (['CONFIRMED', 'SHIPPED'].includes(shortStatus(order.status))) {
        shipment = await get(`${path}/shipment`).catch((err) => (err.status === 404 ? null : Promise.reject(err)));
      }
    } catch (err) {
      showError(err.message);
    }
    render();
  }

  let delay = 500;
  let timer = 0;
  let live = true;
  const done = () => FINAL.has(shortStatus(order.status)) && (shortStatus(order.status) !== 'SHIPPED' || shipment);
  async function tick() {
    await poll();
    cart.load().catch(() => {}); // a confirmed order empties the cart it came from, soon after
    if (!live || done()) return;
    delay = Math.min(delay * 1.5, 5000);
    timer = setTimeout(tick, delay);
  }

  mount(
    el('p', {}, el('a', { href: '#/orders' }, '← Your orders')),
    el('h1', {}, `Order ${order.id.slice(0, 8)}`),
    el('p', { 'aria-live': 'polite' }, 'Status: ', status),
    trailEl, reason, tracking,
    el('table', { class: 'cart' }, el('tbody', {}, order.items.map((i) => el('tr', {},
      el('th', { scope: 'row' }, names.get(i.productId)?.name || i.productId),
      el('td', {}, `× ${i.quantity}`),
      el('td', { class: 'num' }, money(Number(i.unitPriceCents) * Number(i.quantity), order.currency))))),
    el('tfoot', {}, el('tr', {}, el('th', { scope: 'row', colspan: '2' }, 'Total'), el('td', { class: 'num' }, money(order.totalCents, order.currency))))),
    el('p', {}, cancel),
  );
  render();
  if (state.flash) showError(state.flash);
  timer = setTimeout(tick, 0);
  return () => { live = false; clearTimeout(timer); };
}
