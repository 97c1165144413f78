// rowcast live orders page: a live view of `orders` (the @rowcast/client package,
// served by the gateway as /rowcast-client.js), filtered on the server by the status
// tab and the customer search, drawn with virtual scrolling so that 100,000 rows cost
// what the rows on screen cost. Writes go through the REST API (ui/client.js).
import { view } from '/rowcast-client.js';
import { RowcastClient, STATUSES, TRANSPORTS } from '/client.js';

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

// ---- the view -----------------------------------------------------------------

const params = new URLSearchParams(location.search);
/** REST only (create, edit, delete); the rows come from the live view. */
const api = new RowcastClient();
const TABS = ['all', ...STATUSES];

/** What the page shows: transport, status tab and exact customer name (URL-backed). */
const choice = {
  transport: TRANSPORTS.includes(params.get('transport')) ? params.get('transport') : 'ws',
  status: TABS.includes(params.get('status')) ? params.get('status') : 'all',
  customer: params.get('customer') ?? '',
};

/** The server-side filters of the current choice (ANDed by the gateway). */
function filters() {
  const f = [];
  if (choice.status !== 'all') f.push(`status=eq.${choice.status}`);
  if (choice.customer) f.push(`customer_name=eq.${choice.customer}`);
  return f;
}

/** The open live view, replaced whenever the choice changes. */
let live = null;
/** Order ids of the view, ascending: what the virtual table scrolls over. */
let sorted = [];
/** Rows of the view by status, kept in step with enter/update/leave. */
const counts = { pending: 0, shipped: 0, delivered: 0 };
/**
 * The first screen of the All view read with `GET /api/orders?limit=…` while the
 * view's snapshot is on its way (100,000 rows take a second or more): drawn at once,
 * replaced by the snapshot. Null once the view has its rows.
 */
let preview = null;
const PREVIEW_ROWS = 100;
let hasBeenLive = false;
let firstRowMarked = false;

function saveChoice() {
  const url = new URL(location.href);
  for (const [k, v] of Object.entries(choice)) {
    if (v && !(k === 'status' && v === 'all')) url.searchParams.set(k, v);
    else url.searchParams.delete(k);
  }
  history.replaceState(null, '', url);
}

function openView() {
  live?.close();
  const v = view({ url: location.origin, table: 'orders', filter: filters(), transport: choice.transport });
  live = v;
  preview = null;
  if (!filters().length) loadPreview(v);
  // Events of a view that was replaced are stale: each handler checks it is current.
  const on = (type, fn) => v.addEventListener(type, (e) => {
    if (live !== v) return;
    fn(e.detail);
    $('#last-event-id').textContent = v.position ?? '–';
  });
  on('snapshot', ({ rows }) => {
    preview = null;
    if (!performance.getEntriesByName('rowcast:snapshot').length) performance.mark('rowcast:snapshot');
    sorted = [...rows.keys()].map(Number).sort((a, b) => a - b);
    for (const s of STATUSES) counts[s] = 0;
    for (const row of rows.values()) if (row.status in counts) counts[row.status]++;
    clearRows();
    render();
    addFeed('READY', 'op-system', `live at ${v.position}, ${rows.size} rows`);
  });
  on('enter', ({ row }) => {
    const id = Number(row.id);
    insertId(id);
    if (row.status in counts) counts[row.status]++;
    highlights.set(id, ['row']);
    render();
    addFeed('ENTER', 'op-insert', `orders #${id}`, [row.customer_name, row.product_name, row.status].filter(Boolean).join(' · '));
  });
  on('update', ({ row, previous }) => {
    const id = Number(row.id);
    if (previous.status in counts) counts[previous.status]--;
    if (row.status in counts) counts[row.status]++;
    const changed = ['customer_name', 'product_name', 'status', 'updated_at'].filter((k) => previous[k] !== row[k]);
    highlights.set(id, [...(highlights.get(id) ?? []), ...changed]);
    render();
    addFeed('UPDATE', 'op-update', `orders #${id}`, changed.filter((k) => k !== 'updated_at')
      .map((k) => (k === 'status' ? `${previous.status} → ${row.status}` : `${k.replace('_name', '')} → ${row[k]}`)).join(', '));
  });
  on('leave', ({ row }) => {
    const id = Number(row.id);
    const stored = removeId(id);
    if (stored && row.status in counts) counts[row.status]--;
    fadeOut(id);
    render();
    addFeed('LEAVE', 'op-delete', `orders #${id}`, row.customer_name ? `${row.customer_name} left the view` : '');
  });
  on('reset', ({ reason }) => {
    sorted = [];
    for (const s of STATUSES) counts[s] = 0;
    for (const id of [...rowEls.keys()]) fadeOut(id);
    render();
    addFeed('RESET', 'op-system', `${reason || 'history gone'}; reloaded`);
  });
  on('status', (detail) => {
    if (detail.status === 'live') hasBeenLive = true;
    renderState(detail.status === 'live' ? 'live' : navigator.onLine ? 'reconnecting' : 'offline', detail);
  });
  renderState(navigator.onLine ? 'reconnecting' : 'offline');
  renderChoice();
}

/** Draws the first rows from REST until the snapshot of `v` arrives (a hint only). */
async function loadPreview(v) {
  try {
    const res = await fetch(`/api/orders?limit=${PREVIEW_ROWS}`, { signal: AbortSignal.timeout(5000) });
    if (!res.ok) return;
    const rows = await res.json();
    if (live !== v || v.position !== null || !rows.length) return;
    preview = new Map(rows.map((r) => [Number(r.id), r]));
    sorted = [...preview.keys()].sort((a, b) => a - b);
    render();
  } catch {
    // The view's snapshot shows the rows anyway.
  }
}

/** Binary search: the index of the first id >= `id` in `sorted`. */
function lowerBound(id) {
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (sorted[mid] < id) lo = mid + 1; else hi = mid;
  }
  return lo;
}

function insertId(id) {
  const at = lowerBound(id);
  if (sorted[at] !== id) sorted.splice(at, 0, id);
}

function removeId(id) {
  const at = lowerBound(id);
  if (sorted[at] !== id) return false;
  sorted.splice(at, 1);
  return true;
}

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

// ---- connection indicator, transport, tabs, search ------------------------------

function renderState(state, detail = {}) {
  const el = $('#conn-status');
  el.dataset.state = state;
  document.body.dataset.conn = state; // the table dims while it may be stale
  let label = STATE_LABELS[state] || state;
  if (state === 'reconnecting' && !hasBeenLive) label = 'Connecting…';
  $('#conn-label').textContent = label;
  let extra = '';
  if (state !== 'live' && detail.delay !== undefined) {
    extra = detail.delay >= 1000 ? `retry in ${Math.round(detail.delay / 1000)}s` : 'retrying';
  }
  $('#conn-detail').textContent = extra;
}

function renderChoice() {
  const t = choice.transport;
  const el = $('#transport');
  el.textContent = t;
  el.title = TRANSPORT_NAMES[t];
  const other = t === 'ws' ? 'sse' : 'ws';
  const btn = $('#transport-switch');
  btn.textContent = other === 'sse' ? 'Use SSE' : 'Use WebSocket';
  btn.setAttribute('aria-label', `Switch transport to ${TRANSPORT_NAMES[other]}`);
  for (const tab of document.querySelectorAll('.view-tab')) {
    tab.setAttribute('aria-selected', String(tab.dataset.status === choice.status));
  }
  const search = $('#customer-search');
  if (document.activeElement !== search) search.value = choice.customer;
}

/** Changes what the page shows: a new server-side view from the first row. */
function choose(change) {
  Object.assign(choice, change);
  saveChoice();
  sorted = [];
  for (const s of STATUSES) counts[s] = 0;
  clearRows();
  render();
  $('#orders-empty').textContent = 'Loading orders…';
  $('#orders-empty').hidden = false;
  scroller.scrollTop = 0;
  openView();
}

$('#transport-switch').addEventListener('click', () => choose({ transport: choice.transport === 'ws' ? 'sse' : 'ws' }));

$('.tabs').addEventListener('click', (e) => {
  const tab = e.target.closest('.view-tab');
  if (tab && tab.dataset.status !== choice.status) choose({ status: tab.dataset.status });
});

let searchTimer;
$('#customer-search').addEventListener('input', (e) => {
  clearTimeout(searchTimer);
  const customer = e.target.value.trim();
  searchTimer = setTimeout(() => { if (customer !== choice.customer) choose({ customer }); }, 300);
});
$('#search-form').addEventListener('submit', (e) => {
  e.preventDefault();
  clearTimeout(searchTimer);
  const customer = $('#customer-search').value.trim();
  if (customer !== choice.customer) choose({ customer });
});

// The system says the network is gone: say so now; back online, catch up at once
// (a new view re-reads the rows) instead of waiting out the backoff.
window.addEventListener('offline', () => renderState('offline'));
window.addEventListener('online', () => openView());

// ---- table (virtual: only the rows on screen, plus some either side) -------------

const scroller = $('#orders-scroll');
/** Rows drawn beyond each edge of the visible ones, so a fast scroll shows no gap. */
const OVERSCAN = 30;
/** Height of one row in px, measured from the rows drawn (cards on small screens). */
let rowHeight = 45;
/** The drawn rows by order id; a leaving row fades out after it left this map. */
const rowEls = new Map();
/** What to highlight at the next draw, by order id: 'row' (it entered) or changed columns. */
const highlights = new Map();
const topSpacer = spacer();
const bottomSpacer = spacer();
body.append(topSpacer, bottomSpacer);

function spacer() {
  const tr = document.createElement('tr');
  tr.className = 'spacer';
  tr.setAttribute('aria-hidden', 'true');
  const td = document.createElement('td');
  td.colSpan = 6;
  tr.append(td);
  return tr;
}

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
  return tr;
}

function fillRow(tr, row) {
  if (tr.rowData === row) return; // the view replaces a row object when it changes
  tr.rowData = row;
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

function restart(el, cls) {
  el.classList.remove(cls);
  void el.offsetWidth; // restart the CSS animation
  el.classList.add(cls);
  el.addEventListener('animationend', () => el.classList.remove(cls), { once: true });
}

function clearRows() {
  for (const tr of rowEls.values()) tr.remove();
  rowEls.clear();
  for (const tr of body.querySelectorAll('tr[data-leaving-id]')) tr.remove();
}

/** Takes a drawn row out of the view at once (tests and counts see it gone) and fades it. */
function fadeOut(id) {
  const tr = rowEls.get(id);
  if (!tr) return;
  rowEls.delete(id);
  delete tr.dataset.id;
  tr.dataset.leavingId = id;
  tr.setAttribute('aria-hidden', 'true');
  tr.querySelectorAll('button, select').forEach((c) => { c.disabled = true; c.tabIndex = -1; });
  if (matchMedia('(prefers-reduced-motion: reduce)').matches) {
    tr.remove();
    return;
  }
  tr.classList.add('row-leaving');
  const done = () => tr.remove();
  tr.addEventListener('animationend', done, { once: true });
  setTimeout(done, 800);
}

let frame = 0;
/** Draws on the next frame (many changes in one frame cost one draw). */
function render() {
  if (!frame) frame = requestAnimationFrame(draw);
}

function draw() {
  frame = 0;
  const rows = preview ?? live?.rows ?? new Map();
  const visible = Math.ceil((scroller.clientHeight || 600) / rowHeight);
  const first = Math.max(0, Math.floor(scroller.scrollTop / rowHeight) - OVERSCAN);
  const last = Math.min(sorted.length, first + visible + 2 * OVERSCAN);
  const wanted = sorted.slice(first, last);
  const keep = new Set(wanted);
  for (const [id, tr] of rowEls) {
    if (!keep.has(id)) { tr.remove(); rowEls.delete(id); }
  }
  let prev = topSpacer;
  for (const id of wanted) {
    const row = rows.get(id) ?? rows.get(String(id));
    if (!row) continue;
    let tr = rowEls.get(id);
    if (!tr) {
      tr = buildRow(row);
      rowEls.set(id, tr);
    }
    fillRow(tr, row);
    // Leaving rows stay where they are while they fade.
    let next = prev.nextSibling;
    while (next && next.dataset.leavingId !== undefined) next = next.nextSibling;
    if (tr !== next) body.insertBefore(tr, prev.nextSibling);
    prev = tr;
    for (const what of highlights.get(id) ?? []) {
      const el = what === 'row' ? tr : tr.querySelector(`[data-col="${what}"]`);
      if (el) restart(el, what === 'row' ? 'row-new' : 'cell-flash');
    }
  }
  highlights.clear(); // rows off screen are not highlighted later
  topSpacer.firstChild.style.height = `${first * rowHeight}px`;
  bottomSpacer.firstChild.style.height = `${(sorted.length - last) * rowHeight}px`;
  measureRowHeight(wanted);
  renderCounts();
  if (!firstRowMarked && wanted.length) {
    firstRowMarked = true;
    // The frame after this one is painted with the rows: that is "first rows shown".
    requestAnimationFrame(() => performance.mark('rowcast:first-row'));
  }
}

function measureRowHeight(wanted) {
  if (wanted.length < 2) return;
  const a = rowEls.get(wanted[0]);
  const b = rowEls.get(wanted[1]);
  const h = a && b ? b.offsetTop - a.offsetTop : 0;
  if (h > 0 && Math.abs(h - rowHeight) > 0.5) {
    rowHeight = h;
    render();
  }
}

scroller.addEventListener('scroll', render, { passive: true });
window.addEventListener('resize', render);

function renderCounts() {
  if (preview) {
    // Only the first rows are known yet: no counts rather than wrong ones.
    for (const s of [...STATUSES, 'total']) $(`#count-${s}`).textContent = '…';
    $('#view-count').textContent = 'loading';
    $('#orders-empty').hidden = true;
    return;
  }
  for (const s of STATUSES) setCount(`#count-${s}`, counts[s]);
  setCount('#count-total', sorted.length);
  $('#view-count').textContent = `${sorted.length.toLocaleString()} ${sorted.length === 1 ? 'order' : 'orders'}`;
  const empty = $('#orders-empty');
  if (live?.status === 'live' || live?.position != null) {
    empty.textContent = filters().length ? 'No orders match this view.' : 'No orders yet — add one with the form.';
  }
  empty.hidden = sorted.length > 0;
}

function setCount(sel, n) {
  const el = $(sel);
  const text = String(n);
  if (el.textContent !== text) {
    el.textContent = text;
    restart(el, 'bump');
  }
}

// ---- row actions ---------------------------------------------------------------

body.addEventListener('change', async (e) => {
  const select = e.target.closest('.row-status');
  if (!select) return;
  const id = Number(select.dataset.id);
  const status = select.value;
  select.dataset.busy = '1';
  select.setAttribute('aria-busy', 'true');
  try {
    await api.updateOrder(id, { status });
  } catch (err) {
    // The stream is the source of truth: show the row's real status again.
    const row = live?.rows.get(id);
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
    await api.deleteOrder(id);
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
    const created = await api.createOrder(order);
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

/** One line of the feed: what the view did (`op`), to which row, and how. */
function addFeed(op, cls, what, detail = '') {
  const li = document.createElement('li');
  li.className = `feed-item ${cls}`;
  const badge = document.createElement('span');
  badge.className = 'op';
  badge.textContent = op;
  const text = document.createElement('span');
  text.className = 'feed-what';
  text.textContent = what;
  if (detail) {
    const d = document.createElement('span');
    d.className = 'feed-detail';
    d.textContent = detail;
    text.append(' ', d);
  }
  const meta = document.createElement('span');
  meta.className = 'feed-meta';
  const now = new Date();
  const time = document.createElement('time');
  time.dateTime = now.toISOString();
  time.textContent = timeFmt.format(now);
  meta.append(time);
  if (live?.position != null && op !== 'RESET') {
    const eid = document.createElement('span');
    eid.className = 'feed-id';
    eid.textContent = `id ${live.position}`;
    meta.append(eid);
  }
  li.append(badge, text, meta);
  feed.prepend(li);
  while (feed.children.length > FEED_MAX) feed.lastElementChild.remove();
  $('#feed-empty').hidden = true;
}

openView();

// For debugging from the console.
window.rowcast = { get view() { return live; }, choice, api };
