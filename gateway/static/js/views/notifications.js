import { get, post } from '../api.js';
import { el, mount, showError, announce, shortStatus, when } from '../ui.js';

const EVERY_MS = 2000;

export async function notificationsView(params, go, state, refreshCount) {
  const list = el('ul', { class: 'list notes', id: 'notifications' });
  let timer = 0;
  async function load() {
    const page = await get('/api/notifications?pageSize=50');
    const notes = page.notifications || [];
    list.replaceChildren(...(notes.length ? notes.map((n) => el('li', { class: n.read ? 'read' : 'unread', 'data-kind': shortStatus(n.kind) },
      el('h3', {}, n.read ? '' : el('span', { class: 'badge' }, 'new'), ' ', n.subject),
      el('p', {}, n.body),
      el('p', { class: 'muted' }, when(n.createTime)),
      n.read ? null : el('button', {
        type: 'button', 'aria-label': `Mark “${n.subject}” as read`,
        async onclick(ev) {
          ev.target.disabled = true;
          try {
            await post(`/api/notifications/${encodeURIComponent(n.id)}/read`, {});
            announce('Marked as read');
            await load();
            refreshCount();
          } catch (err) {
            showError(err.message);
          }
        },
      }, 'Mark read')))
      : [el('li', { class: 'empty' }, 'No notifications yet.')]));
  }
  await load();
  timer = setInterval(() => load().catch(() => {}), EVERY_MS);
  mount(el('h1', {}, 'Notifications'), list);
  return () => clearInterval(timer);
}
