// rowcast browser client: a snapshot of `orders` kept live by the change stream.
//
// Startup is `GET /api/orders` (rows + `X-Event-Id`, the snapshot's position in the
// change log), then a stream opened with `since=<that id>`. Every change carries a
// commit-ordered id; a change at or below the last applied id is ignored, so an
// event replayed after a reconnect never shows twice. A dropped stream is reopened
// with `since=<last id>` after a capped, fully jittered exponential backoff, for
// ever. `reset` (history gone) refetches the snapshot and carries on from there.
//
// The client owns the rows (a Map keyed by order id) and tells the page what
// happened through DOM events on itself (it is an EventTarget):
//   state     {state: 'live'|'reconnecting'|'offline', failures, delay}
//   snapshot  {rows, position}              the whole table was (re)loaded
//   change    {event, kind, row, previous, changed}   one applied change to `orders`
//   message   {message}                     every message the stream sent
//   position  {position}                    the last id moved
//   transport {transport}

/** Transports the gateway serves. */
export const TRANSPORTS = Object.freeze(['ws', 'sse']);

/** Order statuses, in lifecycle order. */
export const STATUSES = Object.freeze(['pending', 'shipped', 'delivered']);

const DEFAULTS = Object.freeze({
  transport: 'ws',
  /** Origin of the gateway; the page's own by default. */
  base: undefined,
  /** The table this client mirrors. */
  table: 'orders',
  /** First reconnect delay cap (ms); doubles per failure up to maxDelay. */
  minDelay: 250,
  maxDelay: 10_000,
  /** Consecutive failures after which the state reads `offline` (retries go on). */
  offlineAfter: 10,
  /** WebSocket: send an application ping after this much silence (ms)... */
  idlePing: 20_000,
  /** ...and give the socket up as dead after this much (ms). */
  idleTimeout: 50_000,
});

/** An error answered by the REST API: `{"error":{"code","message","field"}}`. */
export class ApiError extends Error {
  constructor(status, body) {
    const err = (body && typeof body === 'object' && body.error) || {};
    super(err.message || `request failed with HTTP ${status}`);
    this.name = 'ApiError';
    this.status = status;
    this.code = err.code || (status ? `http_${status}` : 'network');
    this.field = err.field || null;
  }
}

/** Parses a decimal id (string or number) to BigInt; null when it is not one. */
export function parseId(value) {
  if (typeof value === 'bigint') return value;
  if (typeof value === 'number' && Number.isInteger(value) && value >= 0) return BigInt(value);
  if (typeof value === 'string' && /^\d{1,20}$/.test(value)) return BigInt(value);
  return null;
}

/** Full-jitter backoff: a random delay in [0, min(max, min·2^(failures-1))]. */
export function backoffDelay(failures, minDelay = DEFAULTS.minDelay, maxDelay = DEFAULTS.maxDelay, random = Math.random) {
  const exp = Math.min(30, Math.max(0, failures - 1));
  const cap = Math.min(maxDelay, minDelay * 2 ** exp);
  return Math.round(random() * cap);
}

const ROW_KEYS = ['customer_name', 'product_name', 'status', 'updated_at'];

export class RowcastClient extends EventTarget {
  constructor(options = {}) {
    super();
    this.options = { ...DEFAULTS, ...options };
    if (!TRANSPORTS.includes(this.options.transport)) this.options.transport = 'ws';
    this.base = this.options.base || globalThis.location?.origin || '';
    /** @type {Map<number, object>} order id → row */
    this.rows = new Map();
    /** Last applied position in the change log (BigInt), null before the snapshot. */
    this.position = null;
    this.state = 'reconnecting';
    this.failures = 0;
    this.running = false;
    /** Bumped on every (re)connect so late callbacks of an old socket are ignored. */
    this.generation = 0;
    this.socket = null;
    this.retryTimer = null;
    this.idleTimer = null;
    this.lastMessageAt = 0;
    /** Changes received while a snapshot is being refetched after `reset`. */
    this.pending = null;
    this.snapshotLoaded = false;
    this.hasBeenLive = false;
    this._onOnline = () => this._wake();
    // The system says the network is gone: the socket is as good as dead, so drop it
    // now (the retries that follow read `offline` until the `online` event).
    this._onOffline = () => {
      if (!this.running) return;
      if (this.socket || this.state === 'live') this._down(this.generation, new Error('browser went offline'));
      else this._setState('offline');
    };
  }

  get transport() { return this.options.transport; }

  /** The last applied position as a decimal string ('' before the snapshot). */
  get lastEventId() { return this.position === null ? '' : this.position.toString(); }

  start() {
    if (this.running) return this;
    this.running = true;
    globalThis.addEventListener?.('online', this._onOnline);
    globalThis.addEventListener?.('offline', this._onOffline);
    this._setState('reconnecting');
    this._connect();
    return this;
  }

  stop() {
    this.running = false;
    globalThis.removeEventListener?.('online', this._onOnline);
    globalThis.removeEventListener?.('offline', this._onOffline);
    clearTimeout(this.retryTimer);
    this._closeSocket();
    this._setState('offline');
  }

  /** Switches to the other transport (or the one named), resuming from the last id. */
  setTransport(transport) {
    const next = transport || (this.transport === 'ws' ? 'sse' : 'ws');
    if (!TRANSPORTS.includes(next)) throw new TypeError(`unknown transport ${next}`);
    if (next === this.transport) return;
    this.options.transport = next;
    this._emit('transport', { transport: next });
    if (!this.running) return;
    clearTimeout(this.retryTimer);
    this._closeSocket();
    this.failures = 0;
    this._setState('reconnecting');
    this._connect();
  }

  // ---- REST -------------------------------------------------------------------

  /** `fetch` wrapper: JSON in and out, an ApiError for every non-2xx answer. */
  async request(method, path, body) {
    const init = { method, headers: { Accept: 'application/json' } };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(this.base + path, init);
    } catch (cause) {
      const err = new ApiError(0, { error: { code: 'network', message: 'The gateway cannot be reached.' } });
      err.cause = cause;
      throw err;
    }
    let data = null;
    if (res.status !== 204) {
      const text = await res.text();
      if (text) {
        try { data = JSON.parse(text); } catch { data = null; }
      }
    }
    if (!res.ok) throw new ApiError(res.status, data);
    return { status: res.status, headers: res.headers, data };
  }

  createOrder(order) { return this.request('POST', '/api/orders', order).then((r) => r.data); }
  updateOrder(id, patch) { return this.request('PATCH', `/api/orders/${encodeURIComponent(id)}`, patch).then((r) => r.data); }
  deleteOrder(id) { return this.request('DELETE', `/api/orders/${encodeURIComponent(id)}`).then(() => undefined); }

  // ---- connection cycle -------------------------------------------------------

  async _connect() {
    if (!this.running) return;
    const generation = ++this.generation;
    if (!this.snapshotLoaded) {
      try {
        await this._loadSnapshot();
      } catch (err) {
        if (generation !== this.generation) return;
        this._down(generation, err);
        return;
      }
      if (generation !== this.generation || !this.running) return;
    }
    this._openStream(generation);
  }

  /** GET /api/orders: replaces the rows and the position with the snapshot's. */
  async _loadSnapshot() {
    const { headers, data } = await this.request('GET', '/api/orders');
    if (!Array.isArray(data)) throw new ApiError(500, { error: { code: 'bad_snapshot', message: 'GET /api/orders did not return an array' } });
    let position = parseId(headers.get('X-Event-Id'));
    if (position === null) {
      // Without a snapshot position the only safe resume point is the beginning:
      // replaying history over the rows converges to the same final state.
      console.warn('rowcast: GET /api/orders sent no X-Event-Id; resuming from 0');
      position = 0n;
    }
    const rows = new Map();
    for (const row of data) if (row && row.id != null) rows.set(Number(row.id), row);
    this.rows = rows;
    this.position = position;
    this.snapshotLoaded = true;
    this._emit('snapshot', { rows: this.rows, position: this.lastEventId });
    this._emit('position', { position: this.lastEventId });
  }

  _streamUrl(path) {
    const url = new URL(path, this.base || undefined);
    url.searchParams.set('since', this.lastEventId || '0');
    return url;
  }

  _openStream(generation) {
    if (this.transport === 'ws') this._openWebSocket(generation);
    else this._openEventSource(generation);
  }

  _openWebSocket(generation) {
    const url = this._streamUrl('/ws');
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    let ws;
    try {
      ws = new WebSocket(url);
    } catch (err) {
      this._down(generation, err);
      return;
    }
    this.socket = ws;
    this.lastMessageAt = Date.now();
    ws.onmessage = (ev) => {
      if (generation !== this.generation) return;
      this.lastMessageAt = Date.now();
      if (typeof ev.data !== 'string') return;
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      this._handle(msg, generation);
    };
    ws.onclose = (ev) => {
      if (generation !== this.generation) return;
      this._down(generation, new Error(`WebSocket closed (${ev.code}${ev.reason ? ` ${ev.reason}` : ''})`));
    };
    // `error` is always followed by `close`, which does the work.
    ws.onerror = () => {};
    // The browser answers the gateway's ping frames itself but cannot see them,
    // so a dead path is found by silence: ping after idlePing, give up after idleTimeout.
    clearInterval(this.idleTimer);
    this.idleTimer = setInterval(() => {
      if (generation !== this.generation || ws.readyState !== WebSocket.OPEN) return;
      const idle = Date.now() - this.lastMessageAt;
      if (idle >= this.options.idleTimeout) {
        ws.close(4000, 'idle');
        this._down(generation, new Error('WebSocket silent for too long'));
      } else if (idle >= this.options.idlePing) {
        try { ws.send('{"type":"ping"}'); } catch { /* close follows */ }
      }
    }, Math.max(1000, Math.floor(this.options.idlePing / 2)));
  }

  _openEventSource(generation) {
    // The browser's own reconnect would send Last-Event-ID, but it retries on its
    // own schedule and gives up for good on some errors; recreating the EventSource
    // with `since` keeps one backoff policy for both transports.
    let es;
    try {
      es = new EventSource(this._streamUrl('/events'));
    } catch (err) {
      this._down(generation, err);
      return;
    }
    this.socket = es;
    const onMessage = (ev) => {
      if (generation !== this.generation) return;
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      if (msg && typeof msg === 'object' && !msg.type) msg.type = ev.type;
      this._handle(msg, generation);
    };
    for (const type of ['change', 'ready', 'reset', 'heartbeat', 'pong', 'message']) es.addEventListener(type, onMessage);
    es.addEventListener('error', (ev) => {
      if (generation !== this.generation) return;
      // A named `event: error` block from the gateway arrives on the same listener
      // as the connection's own error; only the former carries data.
      if (typeof MessageEvent !== 'undefined' && ev instanceof MessageEvent && ev.data) {
        onMessage(ev);
        return;
      }
      es.close();
      this._down(generation, new Error('event stream failed'));
    });
  }

  _closeSocket() {
    clearInterval(this.idleTimer);
    this.idleTimer = null;
    const s = this.socket;
    this.socket = null;
    if (!s) return;
    try {
      if (typeof WebSocket !== 'undefined' && s instanceof WebSocket) {
        s.onclose = s.onmessage = s.onerror = null;
        if (s.readyState <= WebSocket.OPEN) s.close(1000, 'client closing');
      } else {
        s.close();
      }
    } catch { /* already closed */ }
  }

  /** The stream (or the snapshot fetch) failed: back off, then try again, for ever. */
  _down(generation, err) {
    if (generation !== this.generation) return;
    this.generation++; // invalidates every callback of the failed attempt
    this._closeSocket();
    this.pending = null;
    if (!this.running) return;
    this.failures++;
    const offline = (globalThis.navigator && navigator.onLine === false) || this.failures >= this.options.offlineAfter;
    const delay = backoffDelay(this.failures, this.options.minDelay, this.options.maxDelay);
    this._setState(offline ? 'offline' : 'reconnecting', { delay, error: err?.message });
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this._connect(), delay);
  }

  /** The network came back: retry now instead of waiting out the backoff. */
  _wake() {
    if (!this.running || this.state === 'live') return;
    clearTimeout(this.retryTimer);
    this.failures = 0;
    this._setState('reconnecting');
    this.generation++;
    this._closeSocket();
    this._connect();
  }

  // ---- messages ---------------------------------------------------------------

  _handle(msg, generation) {
    if (!msg || typeof msg !== 'object') return;
    this._emit('message', { message: msg });
    switch (msg.type) {
      case 'change':
        if (this.pending) this.pending.push(msg);
        else this._applyChange(msg);
        break;
      case 'heartbeat': {
        const id = parseId(msg.id);
        if (id !== null && !this.pending) this._advance(id);
        break;
      }
      case 'ready':
        this.failures = 0;
        this.hasBeenLive = true;
        this._setState('live');
        break;
      case 'reset':
        this._refetch(generation);
        break;
      case 'error':
        console.warn('rowcast: gateway error message', msg);
        break;
      default:
        break;
    }
  }

  /** `reset`: history after our position is gone; reload the snapshot, keep streaming. */
  async _refetch(generation) {
    if (this.pending) return; // a refetch is already running; its buffer keeps filling
    this.pending = [];
    try {
      await this._loadSnapshot();
    } catch (err) {
      if (generation === this.generation) {
        this.snapshotLoaded = false;
        this._down(generation, err);
      }
      return;
    }
    if (generation !== this.generation || !this.pending) return;
    const buffered = this.pending;
    this.pending = null;
    for (const msg of buffered) this._applyChange(msg);
  }

  _advance(id) {
    if (this.position !== null && id <= this.position) return;
    this.position = id;
    this._emit('position', { position: this.lastEventId });
  }

  _applyChange(msg) {
    const id = parseId(msg.id);
    if (id === null) return;
    if (this.position !== null && id <= this.position) return; // already applied
    this.position = id;
    if (msg.table === this.options.table) this._applyRow(msg);
    this._emit('position', { position: this.lastEventId });
  }

  _applyRow(msg) {
    const op = String(msg.op || '').toUpperCase();
    if (op === 'TRUNCATE') {
      const removed = [...this.rows.values()];
      this.rows.clear();
      this._emit('change', { event: msg, kind: 'truncate', row: null, previous: null, removed });
      return;
    }
    const row = msg.row;
    if (!row || row.id == null) return;
    const key = Number(row.id);
    const previous = this.rows.get(key) || null;
    if (op === 'DELETE') {
      if (!previous) return;
      this.rows.delete(key);
      this._emit('change', { event: msg, kind: 'delete', row: previous, previous });
      return;
    }
    if (op !== 'INSERT' && op !== 'UPDATE') return;
    this.rows.set(key, row);
    const changed = previous ? ROW_KEYS.filter((k) => !sameValue(previous[k], row[k])) : ROW_KEYS.slice();
    this._emit('change', { event: msg, kind: previous ? 'update' : 'insert', row, previous, changed });
  }

  _setState(state, detail = {}) {
    const changed = state !== this.state;
    this.state = state;
    if (changed || detail.delay !== undefined) this._emit('state', { state, failures: this.failures, ...detail });
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

function sameValue(a, b) {
  if (a === b) return true;
  if (a && b && typeof a === 'object' && typeof b === 'object') return JSON.stringify(a) === JSON.stringify(b);
  return false;
}

/** Convenience factory: `createClient({transport: 'sse'}).start()`. */
export function createClient(options) {
  return new RowcastClient(options);
}
