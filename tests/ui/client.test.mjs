// Unit tests of ui/client.js with fake fetch, WebSocket and EventSource: the ordering,
// dedup, reset and reconnect rules, without a gateway or a browser.
import assert from 'node:assert/strict';
import { describe, test, beforeEach, afterEach } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { RowcastClient, backoffDelay, parseId } from '../../ui/client.js';

const BASE = 'http://gw.test';

class FakeWebSocket {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSING = 2;
  static CLOSED = 3;
  static all = [];
  constructor(url) {
    this.url = new URL(url);
    this.readyState = FakeWebSocket.OPEN;
    this.sent = [];
    FakeWebSocket.all.push(this);
  }
  send(s) { this.sent.push(s); }
  close() { this.readyState = FakeWebSocket.CLOSED; }
  /** Server side: deliver one message. */
  deliver(msg) { this.onmessage?.({ data: JSON.stringify(msg) }); }
  /** Server side: drop the connection. */
  drop(code = 1001) { this.readyState = FakeWebSocket.CLOSED; this.onclose?.({ code, reason: '' }); }
}

class FakeMessageEvent extends Event {
  constructor(type, init) { super(type); this.data = init.data; }
}

class FakeEventSource extends EventTarget {
  static all = [];
  constructor(url) {
    super();
    this.url = new URL(url);
    this.closed = false;
    FakeEventSource.all.push(this);
  }
  close() { this.closed = true; }
  deliver(msg) { this.dispatchEvent(new FakeMessageEvent(msg.type, { data: JSON.stringify(msg) })); }
  fail() { this.dispatchEvent(new Event('error')); }
}

/** A fake REST API: GET /api/orders answers with `snapshot` (rows + position). */
function fakeFetch(state) {
  return async (url, init = {}) => {
    const u = new URL(url);
    state.requests.push(`${init.method || 'GET'} ${u.pathname}`);
    if (state.down) throw new TypeError('fetch failed');
    if (u.pathname === '/api/orders' && (init.method || 'GET') === 'GET') {
      return new Response(JSON.stringify(state.snapshot.rows), { status: 200, headers: { 'X-Event-Id': state.snapshot.position } });
    }
    return new Response(JSON.stringify({ error: { code: 'invalid', message: 'customer_name must not be blank', field: 'customer_name' } }), { status: 422 });
  };
}

const order = (id, status = 'pending', extra = {}) => ({ id, customer_name: `c${id}`, product_name: `p${id}`, status, updated_at: '2026-01-01T00:00:00Z', ...extra });
const change = (id, op, row, table = 'orders') => ({ type: 'change', id: String(id), table, op, row, committed_at: '2026-01-01T00:00:00Z' });

async function until(fn, ms = 2000) {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error('timed out');
    await sleep(2);
  }
}

describe('ui/client.js', () => {
  let saved;
  let api;
  let client;

  beforeEach(() => {
    saved = { fetch: globalThis.fetch, WebSocket: globalThis.WebSocket, EventSource: globalThis.EventSource, MessageEvent: globalThis.MessageEvent };
    FakeWebSocket.all = [];
    FakeEventSource.all = [];
    api = { requests: [], down: false, snapshot: { rows: [order(1), order(2, 'shipped')], position: '10' } };
    globalThis.fetch = fakeFetch(api);
    globalThis.WebSocket = FakeWebSocket;
    globalThis.EventSource = FakeEventSource;
    globalThis.MessageEvent = FakeMessageEvent;
    saved.warn = console.warn;
    console.warn = () => {};
  });

  afterEach(() => {
    client?.stop();
    console.warn = saved.warn;
    delete saved.warn;
    Object.assign(globalThis, saved);
  });

  test('loads the snapshot, then opens the stream since the snapshot position', async () => {
    client = new RowcastClient({ base: BASE }).start();
    await until(() => FakeWebSocket.all.length === 1);
    const ws = FakeWebSocket.all[0];
    assert.equal(ws.url.pathname, '/ws');
    assert.equal(ws.url.searchParams.get('since'), '10');
    assert.deepEqual([...client.rows.keys()], [1, 2]);
    assert.equal(client.state, 'reconnecting');
    ws.deliver({ type: 'ready', head: '10', replayed: 0 });
    assert.equal(client.state, 'live');
  });

  test('applies inserts, updates and deletes of orders and ignores a change at or below the last id', async () => {
    client = new RowcastClient({ base: BASE }).start();
    await until(() => FakeWebSocket.all.length === 1);
    const ws = FakeWebSocket.all[0];
    const seen = [];
    client.addEventListener('change', (e) => seen.push(`${e.detail.kind} ${e.detail.row?.id}`));
    ws.deliver(change(9, 'INSERT', order(9))); // before the snapshot: already in it
    ws.deliver(change(10, 'DELETE', order(1))); // at the snapshot position: already in it
    ws.deliver(change(11, 'INSERT', order(3)));
    ws.deliver(change(12, 'UPDATE', order(2, 'delivered')));
    ws.deliver(change(12, 'UPDATE', order(2, 'pending'))); // replayed id
    ws.deliver(change(13, 'INSERT', { id: 1, name: 'x' }, 'customers')); // another table
    ws.deliver(change(14, 'DELETE', order(1)));
    assert.deepEqual(seen, ['insert 3', 'update 2', 'delete 1']);
    assert.deepEqual([...client.rows.keys()].sort(), [2, 3]);
    assert.equal(client.rows.get(2).status, 'delivered');
    assert.equal(client.lastEventId, '14');
  });

  test('TRUNCATE clears the rows and a heartbeat moves the position', async () => {
    client = new RowcastClient({ base: BASE }).start();
    await until(() => FakeWebSocket.all.length === 1);
    const ws = FakeWebSocket.all[0];
    ws.deliver(change(11, 'TRUNCATE', undefined));
    assert.equal(client.rows.size, 0);
    ws.deliver({ type: 'heartbeat', id: '20' });
    assert.equal(client.lastEventId, '20');
    ws.deliver({ type: 'heartbeat', id: '15' });
    assert.equal(client.lastEventId, '20', 'a position never moves back');
  });

  test('a dropped WebSocket reconnects with since=<last id> and the state reads reconnecting meanwhile', async () => {
    client = new RowcastClient({ base: BASE, minDelay: 1, maxDelay: 5 }).start();
    await until(() => FakeWebSocket.all.length === 1);
    const ws = FakeWebSocket.all[0];
    ws.deliver({ type: 'ready', head: '10', replayed: 0 });
    ws.deliver(change(11, 'INSERT', order(3)));
    ws.drop();
    assert.equal(client.state, 'reconnecting');
    await until(() => FakeWebSocket.all.length === 2);
    const ws2 = FakeWebSocket.all[1];
    assert.equal(ws2.url.searchParams.get('since'), '11');
    ws2.deliver(change(11, 'INSERT', order(3))); // the replay overlaps: ignored
    ws2.deliver(change(12, 'UPDATE', order(3, 'shipped')));
    ws2.deliver({ type: 'ready', head: '12', replayed: 1 });
    assert.equal(client.state, 'live');
    assert.equal(client.rows.get(3).status, 'shipped');
    assert.equal(api.requests.filter((r) => r === 'GET /api/orders').length, 1, 'a reconnect does not refetch the snapshot');
  });

  test('reset refetches the snapshot and applies only the changes after its position', async () => {
    client = new RowcastClient({ base: BASE }).start();
    await until(() => FakeWebSocket.all.length === 1);
    const ws = FakeWebSocket.all[0];
    api.snapshot = { rows: [order(5), order(6)], position: '100' };
    ws.deliver({ type: 'reset', reason: 'history_gone', head: '99' });
    ws.deliver(change(100, 'DELETE', order(5))); // in the new snapshot already
    ws.deliver(change(101, 'INSERT', order(7)));
    ws.deliver({ type: 'ready', head: '99', replayed: 0 });
    await until(() => client.rows.has(7));
    assert.deepEqual([...client.rows.keys()].sort(), [5, 6, 7]);
    assert.equal(client.lastEventId, '101');
    assert.equal(client.state, 'live');
  });

  test('SSE: named events are handled, a connection error recreates the EventSource with since', async () => {
    client = new RowcastClient({ base: BASE, transport: 'sse', minDelay: 1, maxDelay: 5 }).start();
    await until(() => FakeEventSource.all.length === 1);
    const es = FakeEventSource.all[0];
    assert.equal(es.url.pathname, '/events');
    assert.equal(es.url.searchParams.get('since'), '10');
    es.deliver({ type: 'ready', head: '10', replayed: 0 });
    assert.equal(client.state, 'live');
    es.deliver(change(12, 'INSERT', order(4)));
    // A gateway `event: error` message is not a connection failure.
    es.dispatchEvent(new FakeMessageEvent('error', { data: JSON.stringify({ type: 'error', code: 'x', message: 'y' }) }));
    assert.equal(client.state, 'live');
    es.fail();
    assert.equal(es.closed, true);
    assert.equal(client.state, 'reconnecting');
    await until(() => FakeEventSource.all.length === 2);
    assert.equal(FakeEventSource.all[1].url.searchParams.get('since'), '12');
  });

  test('an unreachable gateway at start-up is retried until the snapshot loads', async () => {
    api.down = true;
    client = new RowcastClient({ base: BASE, minDelay: 1, maxDelay: 4 }).start();
    await until(() => api.requests.length >= 3);
    assert.equal(FakeWebSocket.all.length, 0);
    assert.notEqual(client.state, 'live');
    api.down = false;
    await until(() => FakeWebSocket.all.length === 1);
    assert.equal(FakeWebSocket.all[0].url.searchParams.get('since'), '10');
  });

  test('switching transport resumes from the last id on the other one', async () => {
    client = new RowcastClient({ base: BASE }).start();
    await until(() => FakeWebSocket.all.length === 1);
    FakeWebSocket.all[0].deliver(change(15, 'INSERT', order(8)));
    client.setTransport('sse');
    assert.equal(FakeWebSocket.all[0].readyState, FakeWebSocket.CLOSED);
    await until(() => FakeEventSource.all.length === 1);
    assert.equal(FakeEventSource.all[0].url.searchParams.get('since'), '15');
  });

  test('REST errors carry the API code, message and field', async () => {
    client = new RowcastClient({ base: BASE });
    await assert.rejects(client.createOrder({ customer_name: ' ' }), (err) => {
      assert.equal(err.status, 422);
      assert.equal(err.field, 'customer_name');
      assert.equal(err.message, 'customer_name must not be blank');
      return true;
    });
  });

  test('backoff is fully jittered and capped', () => {
    assert.equal(backoffDelay(1, 250, 10_000, () => 1), 250);
    assert.equal(backoffDelay(3, 250, 10_000, () => 1), 1000);
    assert.equal(backoffDelay(20, 250, 10_000, () => 1), 10_000);
    assert.equal(backoffDelay(5, 250, 10_000, () => 0), 0);
  });

  test('ids parse as decimal strings only', () => {
    assert.equal(parseId('18446744073709551615'), 18446744073709551615n);
    assert.equal(parseId('12a'), null);
    assert.equal(parseId(''), null);
    assert.equal(parseId(7), 7n);
  });
});
