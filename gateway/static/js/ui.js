// Small DOM helpers: elements are built, never parsed from strings (no innerHTML).

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === 'class') node.className = value;
    else if (key === 'text') node.textContent = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (value === true) node.setAttribute(key, '');
    else node.setAttribute(key, value);
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function money(cents, currency = 'USD') {
  const value = Number(cents) / 100;
  try {
    return new Intl.NumberFormat('en', { style: 'currency', currency: currency || 'USD' }).format(value);
  } catch {
    return `${value.toFixed(2)} ${currency}`;
  }
}

export function when(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

// "ORDER_STATUS_CONFIRMED" -> "CONFIRMED"
export const shortStatus = (s) => String(s || '').replace(/^[A-Z]+_(STATUS|KIND)_/, '');

export function showError(message) {
  const box = document.getElementById('alert');
  box.textContent = message;
  box.hidden = false;
}

export function clearError() {
  const box = document.getElementById('alert');
  box.textContent = '';
  box.hidden = true;
}

export function announce(message) {
  document.getElementById('status').textContent = message;
}

export function mount(...nodes) {
  const main = document.getElementById('main');
  main.replaceChildren(...nodes);
  return main;
}

export function field(label, input) {
  const id = input.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  input.id = id;
  return el('div', { class: 'field' }, el('label', { for: id, text: label }), input);
}

export function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}
