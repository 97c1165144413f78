// rowcast live orders page: renders the rows and events of a RowcastClient.
import { RowcastClient, STATUSES, TRANSPORTS, parseId } from '/client.js';

const FEED_MAX = 50;
const THEME_KEY = 'rowcast-theme';
const STATE_LABELS = { live: 'Live', reconnecting: 'Reconnecting…', offline: 'Offline' };
const TRANSPORT_NAMES = { ws: 'WebSocket', sse: 'Server-Sent Events' };

const $ = (sel, root = document) => root.querySelector(sel);
const body = $('#orders-body');

// ---- theme -------------------------------------------------------------------

const darkQuery = window.matchMedia('(prefers-color-scheme: dark)');

function storedTheme() {
  try {
    const t = localStorage.getItem(THEME_KEY);
    return t === 'light' || t === 'dark' ? t : null;
  } catch {
    return null;
  }
}

function effectiveTheme() {
  return storedTheme() || (darkQuery.matches ? 'dark' : 'light');
}

function applyTheme() {
  const stored = storedTheme();
  if (stored) document.documentElement.dataset.theme = stored;
  else delete document.documentElement.dataset.theme;
  const dark = effectiveTheme() === 'dark';
  const btn = $('#theme-toggle');
  btn.setAttribute('aria-pressed', String(dark));
  btn.title = dark ? 'Switch to light theme' : 'Switch to dark theme';
}

$('#theme-toggle').addEventListener('click', () => {
  const next = effectiveTheme() === 'dark' ? 'light' : 'dark';
  try { localStorage.setItem(THEME_KEY, next); } catch { /* private mode: not remembered */ }
  applyTheme();
});
darkQuery.addEventListener?.('change', applyTheme);
applyTheme();

// ---- client ------------------------------------------------------------------

const params = new URLSearchParams(location.search);
const requested = params.get('transport');
const client = new RowcastClient({ transport: TRANSPORTS.includes(requested) ? requested : 'ws' });

// ---- formatting --------------------------------------------------------------

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' });
const dateTimeFmt = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
const fullFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'full', timeStyle: 'medium' });

function formatTime(value) {
  const d = new Date(value);
  if (Number.isNaN(d.getTime())) return { short: String(value ?? ''), full: String(value ?? '') };
  const today = new Date();
  const sameDay = d.toDateString() === today.toDateString();
  return { short: sameDay ? timeFmt.format(d) : dateTimeFmt.format(d), full: fullFmt.format(d) };
}

function capitalize(s) { return s ? s[0].toUpperCase() + s.slice(1) : s; }

// ---- connection indicator ----------------------------------------------------

function renderState(state, detail = {}) {
  const el = $('#conn-status');
  el.dataset.state = state;
  document.body.dataset.conn = state; // the table dims while it may be stale
  let label = STATE_LABELS[state] || state;
  if (state === 'reconnecting' && !client.hasBeenLive) label = 'Connecting…';
  $('#conn-label').textContent = label;
  let extra = '';
  if (state !== 'live' && detail.delay !== undefined) {
    extra = detail.delay >= 1000 ? `retry in ${Math.round(detail.delay / 1000)}s` : 'retrying';
  }
  $('#conn-detail').textContent = extra;
}

function renderTransport() {
  const t = client.transport;
  const el = $('#transport');
  el.textContent = t;
  el.title = TRANSPORT_NAMES[t];
  const other = t === 'ws' ? 'sse' : 'ws';
  const btn = $('#transport-switch');
  btn.textContent = other === 'sse' ? 'Use SSE' : 'Use WebSocket';
  btn.setAttribute('aria-label', `Switch transport to ${TRANSPORT_NAMES[other]}`);
}

$('#transport-switch').addEventListener('click', () => {
  const next = client.transport === 'ws' ? 'sse' : 'ws';
  const url = new URL(location.href);
  url.searchParams.set('transport', next);
  history.replaceState(null, '', url);
  client.setTransport(next);
});

client.addEventListener('state', (e) => renderState(e.detail.state, e.detail));
client.addEventListener('transport', renderTransport);
client.addEventListener('position', (e) => { $('#last-event-id').textContent = e.detail.position || '–'; });
renderState(client.state);
renderTransport();

// ---- table -------------------------------------------------------------------

/** Live rows by order id; a deleted row leaves this map before it fades out. */
const rowEls = new Map();

function statusSelect(row) {
  const select = document.createElement('select');
  select.className = `row-status status-${row.status}`;
  select.setAttribute('aria-label', `Status of order ${row.id}`);
  for (const s of STATUSES) {
    const opt = document.createElement('option');
    opt.value = s;
    opt.textContent = capitalize(s);
    select.append(opt);
  }
  select.value = row.status;
  select.dataset.id = row.id;
  return select;
}

function cell(col, label) {
  const td = document.createElement('td');
  td.dataset.col = col;
  td.dataset.label = label;
  return td;
}

function buildRow(row) {
  const tr = document.createElement('tr');
  tr.dataset.id = row.id;

  const idCell = document.createElement('td');
  idCell.className = 'col-id';
  idCell.dataset.label = '#';
  idCell.textContent = row.id;

  const customer = cell('customer_name', 'Customer');
  const product = cell('product_name', 'Product');
  const status = cell('status', 'Status');
  status.append(statusSelect(row));
  const updated = cell('updated_at', 'Updated');
  updated.append(document.createElement('time'));

  const actions = document.createElement('td');
  actions.className = 'col-actions';
  const del = document.createElement('button');
  del.type = 'button';
  del.className = 'btn btn-danger btn-small row-delete';
  del.dataset.id = row.id;
  del.innerHTML = '<svg viewBox="0 0 24 24" width="16" height="16" aria-hidden="true"><path d="M9 3h6l1 2h4v2H4V5h4l1-2zm-3 6h12l-1 12H7L6 9z" fill="currentColor"/></svg><span class="btn-text">Delete</span>';
  del.setAttribute('aria-label', `Delete order ${row.id}`);
  actions.append(del);

  tr.append(idCell, customer, product, status, updated, actions);
  fillRow(tr, row);
  return tr;
}

function fillRow(tr, row) {
  tr.querySelector('[data-col="customer_name"]').textContent = row.customer_name ?? '';
  tr.querySelector('[data-col="product_name"]').textContent = row.product_name ?? '';
  const select = tr.querySelector('.row-status');
  if (document.activeElement !== select || !select.dataset.busy) select.value = row.status;
  select.className = `row-status status-${row.status}`;
  const time = tr.querySelector('[data-col="updated_at"] time');
  const t = formatTime(row.updated_at);
  time.dateTime = row.updated_at ?? '';
  time.textContent = t.short;
  time.title = t.full;
}

/** Rows are shown newest first: insert before the first row with a smaller id. */
function insertSorted(tr, id) {
  let before = null;
  for (const el of body.children) {
    const other = Number(el.dataset.id ?? el.dataset.leavingId);
    if (other < id) { before = el; break; }
  }
  body.insertBefore(tr, before);
}

function restart(el, cls) {
  el.classList.remove(cls);
  void el.offsetWidth; // restart the CSS animation
  el.classList.add(cls);
  el.addEventListener('animationend', () => el.classList.remove(cls), { once: true });
}

function removeRow(id, animate = true) {
  const tr = rowEls.get(id);
  if (!tr) return;
  rowEls.delete(id);
  // Out of the live set at once (tests and counts see it gone); the fade is cosmetic.
  delete tr.dataset.id;
  tr.dataset.leavingId = id;
  tr.setAttribute('aria-hidden', 'true');
  tr.querySelectorAll('button, select').forEach((c) => { c.disabled = true; c.tabIndex = -1; });
  if (!animate || matchMedia('(prefers-reduced-motion: reduce)').matches) {
    tr.remove();
    return;
  }
  tr.classList.add('row-leaving');
  const done = () => tr.remove();
  tr.addEventListener('animationend', done, { once: true });
  setTimeout(done, 800);
}

function renderAll(rows) {
  for (const id of [...rowEls.keys()]) if (!rows.has(id)) removeRow(id, false);
  const sorted = [...rows.values()].sort((a, b) => Number(b.id) - Number(a.id));
  for (const row of sorted) {
    const id = Number(row.id);
    const tr = rowEls.get(id);
    if (tr) fillRow(tr, row);
    else {
      const el = buildRow(row);
      rowEls.set(id, el);
      body.append(el);
    }
  }
  // Put rows in order (cheap: at most one move per row).
  let prev = null;
  for (const row of sorted) {
    const el = rowEls.get(Number(row.id));
    const expected = prev ? prev.nextSibling : body.firstChild;
    if (el !== expected) body.insertBefore(el, expected);
    prev = el;
  }
  renderCounts();
}

function renderCounts() {
  const counts = { pending: 0, shipped: 0, delivered: 0 };
  for (const row of client.rows.values()) if (row.status in counts) counts[row.status]++;
  for (const s of STATUSES) setCount(`#count-${s}`, counts[s]);
  setCount('#count-total', client.rows.size);
  const empty = $('#orders-empty');
  empty.textContent = 'No orders yet — add one with the form.';
  empty.hidden = client.rows.size > 0;
}

function setCount(sel, n) {
  const el = $(sel);
  const text = String(n);
  if (el.textContent !== text) {
    el.textContent = text;
    restart(el, 'bump');
  }
}

client.addEventListener('snapshot', (e) => renderAll(e.detail.rows));

client.addEventListener('change', (e) => {
  const { kind, row, changed } = e.detail;
  if (kind === 'truncate') {
    for (const id of [...rowEls.keys()]) removeRow(id);
  } else if (kind === 'delete') {
    removeRow(Number(row.id));
  } else {
    const id = Number(row.id);
    let tr = rowEls.get(id);
    if (!tr) {
      tr = buildRow(row);
      rowEls.set(id, tr);
      insertSorted(tr, id);
      restart(tr, 'row-new');
    } else {
      fillRow(tr, row);
      for (const col of changed || []) {
        const td = tr.querySelector(`[data-col="${col}"]`);
        if (td) restart(td, 'cell-flash');
      }
    }
  }
  renderCounts();
});

// ---- row actions ---------------------------------------------------------------

body.addEventListener('change', async (e) => {
  const select = e.target.closest('.row-status');
  if (!select) return;
  const id = Number(select.dataset.id);
  const status = select.value;
  select.dataset.busy = '1';
  select.setAttribute('aria-busy', 'true');
  try {
    await client.updateOrder(id, { status });
  } catch (err) {
    // The stream is the source of truth: show the row's real status again.
    const row = client.rows.get(id);
    if (row) select.value = row.status;
    toast(`Could not update order ${id}: ${err.message}`);
  } finally {
    delete select.dataset.busy;
    select.removeAttribute('aria-busy');
  }
});

body.addEventListener('click', async (e) => {
  const btn = e.target.closest('.row-delete');
  if (!btn || btn.disabled) return;
  const id = Number(btn.dataset.id);
  btn.disabled = true;
  // Keep keyboard focus in the table once this row is gone.
  const tr = btn.closest('tr');
  const neighbour = tr?.nextElementSibling?.querySelector('.row-delete') || tr?.previousElementSibling?.querySelector('.row-delete');
  try {
    await client.deleteOrder(id);
    if (document.activeElement === btn || document.activeElement === document.body) {
      (neighbour && !neighbour.disabled ? neighbour : $('#orders-heading')).focus();
    }
  } catch (err) {
    btn.disabled = false;
    if (err.status === 404) toast(`Order ${id} was already deleted.`);
    else toast(`Could not delete order ${id}: ${err.message}`);
  }
});

let toastTimer;
function toast(message) {
  const el = $('#toast');
  el.textContent = message;
  el.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { el.hidden = true; }, 5000);
}

// ---- form ----------------------------------------------------------------------

const form = $('#order-form');
const FIELDS = ['customer_name', 'product_name', 'status'];

function clearErrors() {
  for (const f of FIELDS) {
    $(`#error-${f}`).textContent = '';
    form.elements[f].removeAttribute('aria-invalid');
  }
  $('#form-error').textContent = '';
}

for (const f of FIELDS) {
  form.elements[f].addEventListener('input', () => {
    $(`#error-${f}`).textContent = '';
    form.elements[f].removeAttribute('aria-invalid');
  });
}

form.addEventListener('submit', async (e) => {
  e.preventDefault();
  clearErrors();
  $('#form-note').textContent = '';
  const order = {
    customer_name: form.elements.customer_name.value,
    product_name: form.elements.product_name.value,
    status: form.elements.status.value,
  };
  const submit = $('#order-submit');
  submit.disabled = true;
  form.setAttribute('aria-busy', 'true');
  try {
    const created = await client.createOrder(order);
    form.reset();
    $('#form-note').textContent = created?.id != null ? `Order #${created.id} added.` : 'Order added.';
    form.elements.customer_name.focus();
  } catch (err) {
    if (err.field && FIELDS.includes(err.field)) {
      $(`#error-${err.field}`).textContent = err.message;
      form.elements[err.field].setAttribute('aria-invalid', 'true');
      form.elements[err.field].focus();
    } else {
      $('#form-error').textContent = err.message;
    }
  } finally {
    submit.disabled = false;
    form.removeAttribute('aria-busy');
  }
});

// ---- feed ----------------------------------------------------------------------

const feed = $('#feed');

/** One line saying what a change did, for the feed. */
function changeSummary(op, msg) {
  const row = msg.row || {};
  if (op === 'TRUNCATE') return 'table cleared';
  if (msg.table !== 'orders') return '';
  if (op === 'INSERT') return [row.customer_name, row.product_name].filter(Boolean).join(' · ');
  if (op === 'DELETE') return row.customer_name ? `${row.customer_name} removed` : '';
  if (op === 'UPDATE') {
    const old = msg.old || {};
    const parts = [];
    for (const k of ['status', 'customer_name', 'product_name']) {
      if (k in old && old[k] !== row[k]) parts.push(k === 'status' ? `${old[k]} → ${row[k]}` : `${k.replace('_name', '')} → ${row[k]}`);
    }
    return parts.join(', ');
  }
  return '';
}

function feedItem(msg) {
  const li = document.createElement('li');
  let op;
  let what;
  let detail = '';
  let when = new Date();
  if (msg.type === 'change') {
    op = String(msg.op || '').toUpperCase();
    const rowId = msg.row?.id;
    what = `${msg.table}${rowId != null ? ` #${rowId}` : ''}`;
    detail = changeSummary(op, msg);
    if (msg.committed_at) when = new Date(msg.committed_at);
    li.className = `feed-item op-${op.toLowerCase()}`;
  } else if (msg.type === 'ready') {
    op = 'READY';
    what = `live at ${msg.head}${msg.replayed ? `, ${msg.replayed} replayed` : ''}`;
    li.className = 'feed-item op-system';
  } else if (msg.type === 'reset') {
    op = 'RESET';
    what = `${msg.reason || 'history gone'}; reloaded`;
    li.className = 'feed-item op-system';
  } else if (msg.type === 'error') {
    op = 'ERROR';
    what = msg.message || msg.code || 'error';
    li.className = 'feed-item op-error';
  } else {
    return null;
  }
  const badge = document.createElement('span');
  badge.className = 'op';
  badge.textContent = op;
  const text = document.createElement('span');
  text.className = 'feed-what';
  text.textContent = what;
  const meta = document.createElement('span');
  meta.className = 'feed-meta';
  const time = document.createElement('time');
  time.dateTime = Number.isNaN(when.getTime()) ? '' : when.toISOString();
  time.textContent = Number.isNaN(when.getTime()) ? '' : timeFmt.format(when);
  meta.append(time);
  if (msg.type === 'change') {
    const eid = document.createElement('span');
    eid.className = 'feed-id';
    eid.textContent = `id ${msg.id}`;
    meta.append(eid);
  }
  if (detail) {
    const d = document.createElement('span');
    d.className = 'feed-detail';
    d.textContent = detail;
    text.append(' ', d);
  }
  li.append(badge, text, meta);
  return li;
}

client.addEventListener('message', (e) => {
  const msg = e.detail.message;
  // A change at or below the position was applied before (a replay after a
  // reconnect): the client ignores it, and so does the feed.
  if (msg.type === 'change' && !client.pending && client.position !== null) {
    const id = parseId(msg.id);
    if (id !== null && id <= client.position) return;
  }
  const li = feedItem(msg);
  if (!li) return;
  feed.prepend(li);
  while (feed.children.length > FEED_MAX) feed.lastElementChild.remove();
  $('#feed-empty').hidden = true;
});

client.start();

// For debugging from the console.
window.rowcast = client;
