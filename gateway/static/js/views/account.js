import { post } from '../api.js';
import { session } from '../session.js';
import { el, field, mount, showError, clearError } from '../ui.js';

async function login(email, password) {
  const t = await post('/api/auth/login', { email, password });
  session.set(t.accessToken, t.expiresIn);
}

function form(title, fields, submitLabel, onsubmit, footer) {
  const button = el('button', { type: 'submit' }, submitLabel);
  return mount(
    el('h1', {}, title),
    el('form', {
      class: 'stack narrow',
      novalidate: true,
      async onsubmit(ev) {
        ev.preventDefault();
        clearError();
        button.disabled = true;
        try {
          await onsubmit(new FormData(ev.target));
        } catch (err) {
          showError(err.message);
        } finally {
          button.disabled = false;
        }
      },
    }, fields, button),
    footer,
  );
}

const input = (name, type, autocomplete, extra = {}) => el('input', { name, type, autocomplete, required: true, ...extra });

export function loginView(params, go) {
  const next = params.get('next') || '#/';
  form('Log in', [
    field('Email', input('email', 'email', 'username')),
    field('Password', input('password', 'password', 'current-password')),
  ], 'Log in', async (data) => {
    await login(String(data.get('email')), String(data.get('password')));
    if (next.startsWith('/console')) window.location.assign('/console');
    else go(next.startsWith('#/') ? next : '#/');
  }, el('p', {}, 'New here? ', el('a', { href: '#/register' }, 'Create an account')));
}

export function registerView(params, go) {
  form('Create an account', [
    field('Name', input('name', 'text', 'name')),
    field('Email', input('email', 'email', 'email')),
    field('Password (at least 8 characters)', input('password', 'password', 'new-password', { minlength: '8' })),
  ], 'Register', async (data) => {
    const email = String(data.get('email'));
    const password = String(data.get('password'));
    await post('/api/users', { email, name: String(data.get('name')), password });
    await login(email, password);
    go('#/', { flash: null });
  }, el('p', {}, 'Have an account? ', el('a', { href: '#/login' }, 'Log in')));
}
