// The access token for this browser tab (sessionStorage: gone when the tab closes).
// A copy goes into a cookie scoped to /console, so the gateway can decide whether that
// page may be served; the roles shown here come from the signed token and only pick
// which links to show: the gateway checks them again on every admin call.

const KEY = 'shop.token';
const COOKIE = 'shop_token';
const listeners = new Set();

function decode(token) {
  try {
    const part = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(part.padEnd(part.length + (4 - (part.length % 4)) % 4, '=')));
  } catch {
    return null;
  }
}

function setCookie(token, maxAge) {
  document.cookie = `${COOKIE}=${token}; Path=/console; SameSite=Strict; Max-Age=${maxAge}`;
}

export const session = {
  token() {
    const token = sessionStorage.getItem(KEY);
    if (!token) return '';
    const claims = decode(token);
    if (!claims || (claims.exp && claims.exp * 1000 < Date.now())) {
      this.clear();
      return '';
    }
    return token;
  },
  claims() {
    const token = this.token();
    return token ? decode(token) : null;
  },
  loggedIn() { return Boolean(this.token()); },
  isAdmin() {
    const claims = this.claims();
    return Boolean(claims && Array.isArray(claims.roles) && claims.roles.includes('admin'));
  },
  email() { return this.claims()?.email || ''; },
  set(token, expiresIn) {
    sessionStorage.setItem(KEY, token);
    setCookie(token, Math.max(1, Number(expiresIn) || 3600));
    listeners.forEach((fn) => fn());
  },
  clear() {
    const had = sessionStorage.getItem(KEY) !== null;
    sessionStorage.removeItem(KEY);
    setCookie('', 0);
    if (had) listeners.forEach((fn) => fn());
  },
  onChange(fn) { listeners.add(fn); },
};
