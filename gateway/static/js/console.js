// The operator console: /api/admin/* with the admin's token from this tab's session.
import { get, post } from './api.js';
import { session } from './session.js';
import { el, showError, clearError, announce, shortStatus, when } from './ui.js';

const INSTANCES_EVERY_MS = 5000;
const EVENTS_EVERY_MS = 1000;
const $ = (sel) => document.querySelector(sel);

function uptime(seconds) {
  if (seconds === null || seconds === undefined) return '-';
  const s = Math.floor(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
  return `${Math.floor(s / 86400)}d${String(Math.floor((s % 86400) / 3600)).padStart(2, '0')}h`;
}

// Grouped by state, the worrying ones first, as `shopctl status` prints them.
function breakers(states) {
  const groups = {};
  Object.entries(states || {}).sort().forEach(([name, state]) => { (groups[state] ||= []).push(name); });
  const rank = { open: 0, 'half-open': 1, closed: 3 };
  const order = Object.keys(groups).sort((a, b) => (rank[a] ?? 2) - (rank[b] ?? 2) || a.localeCompare(b));
  if (!order.length) return '-';
  return el('span', {}, order.map((state, n) => [n ? '; ' : '',
    el('span', { class: `s-${state}` }, `${state}: `), groups[state].join(', ')]));
}

async function instances() {
  try {
    const { instances: rows } = await get('/api/admin/instances');
    const backends = rows.some((i) => i.backend);
    $('#backend-col').hidden = !backends;
    $('#instances-table tbody').replaceChildren(...rows.map((i) => el('tr', { 'data-service': i.service },
      el('td', {}, i.service), el('td', { class: 'mono' }, i.instance), el('td', { class: 'mono' }, i.addr),
      el('td', { class: `status s-${i.health.toLowerCase()}` }, i.health),
      el('td', {}, uptime(i.uptimeSeconds)), el('td', {}, breakers(i.breakers)),
      backends ? el('td', {}, i.backend || '-') : null)));
  } catch (err) {
    showError(`Instances: ${err.message}`);
  }
}

async function saga(orderId) {
  const box = $('#saga-result');
  clearError();
  try {
    const h = await get(`/api/admin/orders/${encodeURIComponent(orderId)}/saga`);
    const retry = h.retryable ? el('button', {
      type: 'button', id: 'retry-saga',
      async onclick(ev) {
        ev.target.disabled = true;
        try {
          await post(`/api/admin/orders/${encodeURIComponent(orderId)}/retry`, {});
          announce('Saga resumed');
          await saga(orderId);
        } catch (err) {
          showError(`Retry: ${err.message}`);
          ev.target.disabled = false;
        }
      },
    }, 'Retry saga') : null;
    box.replaceChildren(
      el('p', {}, 'Order ', el('span', { class: 'mono' }, h.orderId), ': ',
        el('strong', { id: 'saga-status', class: `status s-${shortStatus(h.status).toLowerCase()}` }, shortStatus(h.status)), ' ', retry),
      el('div', { class: 'scroll' }, el('table', { id: 'saga-table' },
        el('thead', {}, el('tr', {}, ['Time', 'Step', 'Outcome', 'Attempt', 'Error'].map((t) => el('th', { scope: 'col' }, t)))),
        el('tbody', {}, h.steps.map((s) => el('tr', {},
          el('td', { class: 'mono' }, when(s.time)), el('td', {}, s.step), el('td', {}, s.outcome),
          el('td', {}, String(s.attempt)), el('td', {}, s.error)))))));
  } catch (err) {
    box.replaceChildren(el('p', { class: 'empty' }, err.status === 404 ? `No order ${orderId}.` : err.message));
  }
}

const STOCK_EVENTS = {
  STOCK_EVENT_TYPE_STOCK_SET: 'stock set', STOCK_EVENT_TYPE_RESERVED: 'reserved',
  STOCK_EVENT_TYPE_RELEASED: 'released', STOCK_EVENT_TYPE_COMMITTED: 'committed',
  STOCK_EVENT_TYPE_RESTOCKED: 'restocked',
};
const level = (s) => `${s.available} available, ${s.reserved} reserved, ${s.sold} sold`;

// A product's stock (now, or at a past time) and its events, newest first, a page at a time.
async function stock(productId, asOf) {
  const box = $('#stock-result');
  clearError();
  const id = encodeURIComponent(productId);
  try {
    const at = asOf ? new Date(asOf).toISOString() : '';
    const s = await get(`/api/inventory/${id}${at ? `?asOf=${encodeURIComponent(at)}` : ''}`);
    const rows = el('tbody', {});
    const older = el('button', { type: 'button', id: 'stock-older', hidden: true }, 'Older events');
    let token = '';
    const page = async () => {
      const q = `pageSize=20${token ? `&pageToken=${encodeURIComponent(token)}` : ''}`;
      const h = await get(`/api/inventory/${id}/history?${q}`);
      rows.append(...h.events.map((e) => el('tr', { 'data-version': e.version },
        el('td', { class: 'mono' }, when(e.createTime)), el('td', {}, String(e.version)),
        el('td', {}, STOCK_EVENTS[e.type] || e.type), el('td', {}, String(e.quantity)),
        el('td', { class: 'mono' }, e.orderId || '-'), el('td', {}, level(e.stock)))));
      token = h.nextPageToken;
      older.hidden = !token;
    };
    older.addEventListener('click', async () => {
      older.disabled = true;
      try { await page(); } catch (err) { showError(`Stock history: ${err.message}`); }
      older.disabled = false;
    });
    await page();
    box.replaceChildren(
      el('p', { id: 'stock-level' }, el('span', { class: 'mono' }, s.productId),
        at ? ` at ${when(at)}: ` : ': ', el('strong', {}, level(s))),
      el('div', { class: 'scroll' }, el('table', { id: 'stock-table' },
        el('thead', {}, el('tr', {}, ['Time', 'Version', 'Event', 'Units', 'Order', 'Stock after']
          .map((t) => el('th', { scope: 'col' }, t)))), rows)),
      older);
  } catch (err) {
    box.replaceChildren(el('p', { class: 'empty' }, err.status === 404
      ? `No stock for ${productId}${asOf ? ' at that time' : ''}.` : err.message));
  }
}

async function deadLetters() {
  try {
    const { deadLetters: rows } = await get('/api/admin/dlq');
    $('#dlq-table tbody').replaceChildren(...(rows.length ? rows.map((d) => el('tr', { 'data-id': d.id },
      el('td', {}, d.id), el('td', { class: 'mono' }, when(d.time)), el('td', {}, d.subject),
      el('td', {}, d.consumer), el('td', {}, d.reason),
      el('td', {}, el('button', {
        type: 'button', 'aria-label': `Replay dead letter ${d.id}`,
        async onclick(ev) {
          ev.target.disabled = true;
          try {
            const r = await post(`/api/admin/dlq/${encodeURIComponent(d.id)}/replay`, {});
            announce(`Replayed ${r.replayed} dead letter(s)`);
          } catch (err) {
            showError(`Replay: ${err.message}`);
          }
          await deadLetters();
        },
      }, 'Replay')))) : [el('tr', {}, el('td', { colspan: '6', class: 'empty' }, 'No dead letters.'))]));
  } catch (err) {
    showError(`Dead letters: ${err.message}`);
  }
}

let after = 0;
async function events() {
  try {
    const r = await get(`/api/admin/events?after=${after}`);
    after = r.last;
    const body = $('#events-table tbody');
    for (const e of r.events) {
      // An order's events are keyed by the order id: one click opens its saga.
      const open = e.subject.startsWith('order.') && e.aggregateId ? el('button', {
        type: 'button', class: 'link', 'aria-label': `Saga of order ${e.aggregateId}`,
        onclick() {
          $('#order-id').value = e.aggregateId;
          saga(e.aggregateId);
          $('#saga').scrollIntoView();
        },
      }, e.aggregateId.slice(0, 8)) : '';
      body.prepend(el('tr', { 'data-subject': e.subject },
        el('td', { class: 'mono' }, when(e.time)), el('td', {}, e.subject),
        el('td', { class: 'mono' }, e.correlationId || '-'), el('td', {}, e.source),
        el('td', { class: 'mono' }, open)));
    }
    while (body.children.length > 300) body.lastElementChild.remove();
  } catch (err) {
    showError(`Events: ${err.message}`);
  }
  setTimeout(events, EVENTS_EVERY_MS);
}

if (!session.isAdmin()) {
  // The page came with the cookie, but this tab has no admin session: log in here.
  window.location.assign('/#/login?next=/console');
} else {
  $('#saga-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const id = String(new FormData(ev.target).get('order') || '').trim();
    if (id) saga(id);
  });
  $('#stock-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const form = new FormData(ev.target);
    const id = String(form.get('product') || '').trim();
    if (id) stock(id, String(form.get('asOf') || ''));
  });
  $('#refresh-instances').addEventListener('click', instances);
  $('#refresh-dlq').addEventListener('click', deadLetters);
  instances();
  setInterval(instances, INSTANCES_EVERY_MS);
  deadLetters();
  events();
}
