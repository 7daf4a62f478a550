// Small DOM helpers that update in place: a live update must never replace an element a person
// is focusing, hovering, clicking or selecting text in. Text goes in with textContent only.

export const $ = (id) => document.getElementById(id);

export function fromTemplate(id) {
  return $(id).content.firstElementChild.cloneNode(true);
}

// Set text only when it differs (no needless DOM writes, no lost selection in unchanged text).
export function setText(el, text) {
  const value = String(text ?? "");
  if (el.textContent !== value) el.textContent = value;
}

export function setAttr(el, name, value) {
  if (value === null || value === undefined) {
    if (el.hasAttribute(name)) el.removeAttribute(name);
  } else if (el.getAttribute(name) !== String(value)) {
    el.setAttribute(name, String(value));
  }
}

export function setHidden(el, hidden) {
  if (el.hidden !== Boolean(hidden)) el.hidden = Boolean(hidden);
}

const rowsOf = new WeakMap();   // list element -> Map(key -> row element)

// Make `list`'s children one row per item, in order, reusing the row already shown for a key:
// rows are created once (create(item)), then only updated (update(row, item)); a row that keeps
// its place is never detached, and rows whose items went away are removed.
export function keyed(list, items, keyOf, create, update) {
  const old = rowsOf.get(list) || new Map();
  const next = new Map();
  let ref = list.firstChild;
  for (const item of items) {
    const key = keyOf(item);
    let row = old.get(key);
    if (!row || next.has(key)) row = create(item);
    next.set(key, row);
    update(row, item);
    if (row === ref) {
      ref = ref.nextSibling;
    } else {
      list.insertBefore(row, ref);
    }
  }
  for (const [key, row] of old) if (next.get(key) !== row) row.remove();
  rowsOf.set(list, next);
}
