// @rowcast/client: live views of PostgreSQL rows over rowcast.
//
// `view({ url, table, filter, transport })` opens a stream with `snapshot=true`: the
// gateway sends the rows that match now, then `ready`, then every change after, each
// once. The view applies them to `rows` (a Map keyed by the table's `key`, `id` by
// default) and tells its listeners what moved. A dropped stream is reopened after a
// capped, jittered backoff, resuming from the last position (`since`); a drop
// mid-snapshot starts the snapshot over, and `reset` (history gone) re-snapshots.
//
// Both transports work in browsers and in Node >= 18: Server-Sent Events are read
// with `fetch` (so a token can travel in a header), WebSocket with the global
// `WebSocket` or the constructor passed as `WebSocket` (the `ws` package in Node 20).

/** Transports the gateway serves. */
export const TRANSPORTS = Object.freeze(['ws', 'sse']);

const DEFAULTS = Object.freeze({
  transport: 'ws',
  key: 'id',
  minDelay: 250,
  maxDelay: 10_000,
});

/** Full-jitter backoff: a random delay in [0, min(max, min·2^(failures-1))]. */
export function backoffDelay(failures, minDelay = DEFAULTS.minDelay, maxDelay = DEFAULTS.maxDelay, random = Math.random) {
  const cap = Math.min(maxDelay, minDelay * 2 ** Math.min(30, Math.max(0, failures - 1)));
  return Math.round(random() * cap);
}

/** The query string of a stream: `tables`, repeated `filter`, and the position or a snapshot. */
export function streamQuery({ table, filter, token }, position) {
  const params = new URLSearchParams();
  if (table) params.set('tables', table);
  for (const f of [].concat(filter ?? [])) params.append('filter', f);
  if (position === null) params.set('snapshot', 'true');
  else params.set('since', position);
  if (token) params.set('access_token', token);
  return params.toString();
}

/**
 * A live view: `rows` stays equal to the rows of `table` that pass `filter`.
 * Events (on the view, an EventTarget; `detail` holds the payload):
 *   snapshot {rows}            the view was (re)loaded; rows is the Map
 *   enter    {row}             a row joined the view (INSERT, or an UPDATE moved it in)
 *   update   {row, previous}   a row in the view changed and stays
 *   leave    {row}             a row left the view (DELETE, or an UPDATE moved it out)
 *   reset    {reason}          every row was dropped (TRUNCATE, or history gone)
 *   status   {status, failures, delay}  'connecting' | 'live' | 'reconnecting' | 'closed'
 */
export class View extends EventTarget {
  constructor(options) {
    super();
    this.options = { ...DEFAULTS, ...options };
    if (!this.options.url) throw new TypeError('view: `url` (the gateway origin) is required');
    if (!TRANSPORTS.includes(this.options.transport)) {
      throw new TypeError(`view: transport must be one of ${TRANSPORTS.join(', ')}`);
    }
    /** @type {Map<unknown, object>} */
    this.rows = new Map();
    /** The last position applied (decimal string); null until the first `ready`. */
    this.position = null;
    this.status = 'connecting';
    this.failures = 0;
    this._closed = false;
    this._pending = null; // the snapshot being received: a Map, or null
    this._connect();
  }

  /** Stops the view for good. */
  close() {
    this._closed = true;
    clearTimeout(this._timer);
    this._stop?.();
    this._setStatus('closed');
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _setStatus(status, extra = {}) {
    this.status = status;
    this._emit('status', { status, failures: this.failures, ...extra });
  }

  _connect() {
    if (this._closed) return;
    if (this.position === null) this._pending = new Map();
    const query = streamQuery(this.options, this.position);
    const open = this.options.transport === 'ws' ? openWebSocket : openEventStream;
    this._stop = open(this.options, query, {
      message: (message) => this._apply(message),
      end: () => this._retry(),
    });
  }

  _retry() {
    this._stop = null;
    if (this._closed) return;
    this.failures += 1;
    const delay = backoffDelay(this.failures, this.options.minDelay, this.options.maxDelay);
    this._setStatus('reconnecting', { delay });
    this._timer = setTimeout(() => this._connect(), delay);
  }

  _restart() {
    // Re-snapshot on a fresh stream.
    this._stop?.();
    this._stop = null;
    this.position = null;
    this._connect();
  }

  _apply(message) {
    const key = this.options.key;
    switch (message.type) {
      case 'snapshot':
        for (const row of message.rows) this._pending?.set(row[key], row);
        return;
      case 'ready':
        this.position = message.head;
        this.failures = 0;
        if (this._pending) {
          this.rows = this._pending;
          this._pending = null;
          this._emit('snapshot', { rows: this.rows });
        }
        this._setStatus('live');
        return;
      case 'reset':
        this.rows = new Map();
        this._emit('reset', { reason: message.reason });
        this._restart();
        return;
      case 'change':
        this.position = message.id;
        this._change(message);
        return;
      default:
        // heartbeat, pong, error: nothing to apply.
        if (message.type === 'heartbeat' && this.position !== null) this.position = message.id;
    }
  }

  _change(message) {
    const key = this.options.key;
    if (message.op === 'TRUNCATE') {
      this.rows.clear();
      this._emit('reset', { reason: 'truncate', table: message.table });
      return;
    }
    const row = message.row;
    const id = row[key];
    const leaves = message.op === 'DELETE' || message.view === 'leave';
    if (leaves) {
      this.rows.delete(id);
      this._emit('leave', { row });
    } else if (message.op === 'INSERT' || message.view === 'enter' || !this.rows.has(id)) {
      this.rows.set(id, row);
      this._emit('enter', { row });
    } else {
      const previous = this.rows.get(id);
      this.rows.set(id, row);
      this._emit('update', { row, previous });
    }
  }
}

/** Opens a live view (see {@link View}). */
export function view(options) {
  return new View(options);
}

function openWebSocket(options, query, on) {
  const Socket = options.WebSocket ?? globalThis.WebSocket;
  if (!Socket) throw new TypeError('view: no WebSocket here; pass `WebSocket` (the `ws` package in Node)');
  const url = options.url.replace(/^http/, 'ws') + '/ws?' + query;
  const socket = new Socket(url);
  let ended = false;
  const end = () => {
    if (!ended) {
      ended = true;
      on.end();
    }
  };
  // Once stopped (a restart after `reset`), messages still queued are not this view's.
  socket.onmessage = (event) => {
    if (!ended) on.message(JSON.parse(event.data));
  };
  socket.onclose = end;
  socket.onerror = () => socket.close();
  return () => {
    ended = true;
    socket.close();
  };
}

function openEventStream(options, query, on) {
  const controller = new AbortController();
  const headers = { Accept: 'text/event-stream' };
  (async () => {
    const response = await (options.fetch ?? fetch)(options.url + '/events?' + query, {
      headers,
      signal: controller.signal,
    });
    if (!response.ok) throw new Error(`GET /events: HTTP ${response.status}`);
    const decoder = new TextDecoder();
    let buffer = '';
    for await (const chunk of response.body) {
      buffer += decoder.decode(chunk, { stream: true });
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = block
          .split('\n')
          .filter((line) => line.startsWith('data:'))
          .map((line) => line.slice(line.startsWith('data: ') ? 6 : 5))
          .join('\n');
        // Once stopped (a restart after `reset`), blocks still buffered are not this view's.
        if (data && !controller.signal.aborted) on.message(JSON.parse(data));
      }
    }
  })()
    .catch(() => {})
    .finally(() => {
      if (!controller.signal.aborted) on.end();
    });
  return () => controller.abort();
}
