// The public REST API, with errors turned into sentences a shopper can act on.
import { session } from './session.js';

export class ApiError extends Error {
  constructor(status, code, message, detail) {
    super(message);
    this.status = status;
    this.code = code;
    this.detail = detail || '';
  }
}

function sentence(text) {
  const t = String(text || '').trim();
  return t ? t[0].toUpperCase() + t.slice(1) + (/[.!?]$/.test(t) ? '' : '.') : '';
}

// What went wrong, in words. `detail` is the server's own message.
export function describe(status, code, detail, retryAfter) {
  const d = String(detail || '');
  if (status === 0) return 'The shop cannot be reached. Check your connection and try again.';
  if (status === 429) {
    const wait = Number(retryAfter) > 0 ? `${Math.ceil(Number(retryAfter))} seconds` : 'a moment';
    return `Too many requests right now. Please wait ${wait} and try again.`;
  }
  if (/declined/i.test(d)) return 'Your card was declined: the payment was refused, so nothing was charged and the order was cancelled.';
  if (/stock/i.test(d)) return `Sorry, there is not enough stock for this order (${d}).`;
  if (status === 401) return d && !/token/i.test(d) ? sentence(d) : 'Please log in to continue.';
  if (status === 404) return 'That was not found. It may have been removed.';
  if (status === 409) return sentence(d) || 'That already exists.';
  if (status === 413) return 'That request is too large.';
  if (status >= 500) return 'The shop is having trouble right now. Please try again in a moment.';
  return sentence(d) || `The request failed (${code || status}).`;
}

export async function api(method, path, { body, headers = {}, signal } = {}) {
  const h = { accept: 'application/json', ...headers };
  if (body !== undefined) h['content-type'] = 'application/json';
  const token = session.token();
  if (token) h.authorization = `Bearer ${token}`;
  let res;
  try {
    res = await fetch(path, {
      method, headers: h, signal, body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    if (err.name === 'AbortError') throw err;
    throw new ApiError(0, 'UNAVAILABLE', describe(0));
  }
  const text = await res.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (!res.ok) {
    const e = (data && data.error) || {};
    if (res.status === 401 && token) session.clear();
    throw new ApiError(res.status, e.status || '', describe(res.status, e.status, e.message,
      res.headers.get('retry-after')), e.message);
  }
  return data;
}

export const get = (path, opts) => api('GET', path, opts);
export const post = (path, body, opts = {}) => api('POST', path, { ...opts, body });
export const del = (path, opts) => api('DELETE', path, opts);
