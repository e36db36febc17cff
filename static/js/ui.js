// @ts-check
/** Small DOM helpers for the page. Everything text is set with textContent, never as HTML. */

/**
 * @param {string} sel
 * @returns {HTMLElement}
 */
export function $(sel) {
  const node = document.querySelector(sel);
  if (!node) throw new Error(`missing element ${sel}`);
  return /** @type {HTMLElement} */ (node);
}

/**
 * @param {string} tag
 * @param {Record<string, string>} [attrs]
 * @param {...(Node | string)} children
 * @returns {HTMLElement}
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) if (v) node.setAttribute(k, v);
  node.append(...children);
  return node;
}

const SCREENS = ['boot', 'landing', 'prejoin', 'call', 'ended', 'fatal'];

/** @param {string} name */
export function showScreen(name) {
  for (const s of SCREENS) $(`#${s}`).hidden = s !== name;
  document.body.dataset.screen = name;
}

/** @type {Map<string, ReturnType<typeof setTimeout>>} */
const timers = new Map();

/**
 * Shows (or replaces) a notice above the tiles.
 * @param {string} id
 * @param {'info' | 'warn' | 'bad'} kind
 * @param {string} text
 * @param {number} [ttlMs] 0 = until cleared
 * @param {{label: string, onClick: () => void}} [action]
 */
export function setNotice(id, kind, text, ttlMs = 0, action) {
  const box = $('#notices');
  let n = /** @type {HTMLElement | null} */ (box.querySelector(`[data-notice="${id}"]`));
  if (!n) {
    n = el('div', { 'data-notice': id, role: kind === 'bad' ? 'alert' : 'status' });
    box.append(n);
  }
  n.className = `notice ${kind === 'warn' ? '' : kind}`.trim();
  const children = [el('span', {}, text)];
  if (action) {
    const b = el('button', { class: 'icon-btn', type: 'button' }, action.label);
    b.onclick = action.onClick;
    children.push(b);
  }
  const close = el('button', { class: 'icon-btn', type: 'button', title: 'Dismiss' }, '✕');
  close.onclick = () => clearNotice(id);
  children.push(close);
  n.replaceChildren(...children);
  const old = timers.get(id);
  if (old) clearTimeout(old);
  timers.delete(id);
  if (ttlMs > 0) timers.set(id, setTimeout(() => clearNotice(id), ttlMs));
}

/** @param {string} id */
export function clearNotice(id) {
  document.querySelector(`#notices [data-notice="${id}"]`)?.remove();
  const old = timers.get(id);
  if (old) clearTimeout(old);
  timers.delete(id);
}

/**
 * Initials and a colour for a name.
 * @param {string} name
 * @returns {{initials: string, hue: number}}
 */
export function avatarFor(name) {
  const words = name.trim().split(/\s+/).filter(Boolean);
  const initials = (words.length > 1 ? words[0][0] + words[1][0] : (words[0] || '?').slice(0, 2))
    .toUpperCase();
  let h = 0;
  for (const ch of name) h = (h * 31 + (ch.codePointAt(0) || 0)) >>> 0;
  return { initials, hue: h % 6 };
}
