// The view against a real gateway (ROWCAST_URL, started by tests/js_client.rs with a
// fresh database): on both transports a view of `status=eq.pending` holds exactly the
// pending orders while REST writes move orders in and out, across a reconnect.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import WebSocket from 'ws';

import { view, streamQuery } from '../index.js';

const url = process.env.ROWCAST_URL;

async function api(method, path, body) {
  const response = await fetch(url + path, {
    method,
    headers: body ? { 'Content-Type': 'application/json' } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  assert.ok(response.ok, `${method} ${path}: HTTP ${response.status}`);
  return response.status === 204 ? null : response.json();
}

/** Resolves when `predicate()` holds, checked after every event of `target`. */
function until(target, predicate, what) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`not within 15 s: ${what}`)), 15_000);
    const check = () => {
      if (predicate()) {
        clearTimeout(timer);
        for (const type of ['snapshot', 'enter', 'update', 'leave', 'reset', 'status']) {
          target.removeEventListener(type, check);
        }
        resolve();
      }
    };
    for (const type of ['snapshot', 'enter', 'update', 'leave', 'reset', 'status']) {
      target.addEventListener(type, check);
    }
    check();
  });
}

async function pendingOrders() {
  const rows = await api('GET', '/api/orders');
  return new Map(rows.filter((r) => r.status === 'pending').map((r) => [r.id, r]));
}

test('streamQuery asks for a snapshot without a position and resumes with since', () => {
  assert.equal(
    streamQuery({ table: 'orders', filter: ['status=eq.pending', 'id=gt.3'] }, null),
    'tables=orders&filter=status%3Deq.pending&filter=id%3Dgt.3&snapshot=true',
  );
  assert.equal(streamQuery({ filter: 'status=eq.pending' }, '42'), 'filter=status%3Deq.pending&since=42');
});

for (const transport of ['ws', 'sse']) {
  test(`a ${transport} view stays equal to the pending orders as rows move in and out`, async () => {
    const mine = await api('POST', '/api/orders', { customer_name: `${transport} first`, product_name: 'p' });
    const live = view({ url, table: 'orders', filter: 'status=eq.pending', transport, WebSocket, minDelay: 10 });
    const seen = { enter: 0, leave: 0, update: 0 };
    for (const type of Object.keys(seen)) live.addEventListener(type, () => (seen[type] += 1));
    try {
      await until(live, () => live.status === 'live', 'live');
      assert.ok(live.rows.has(mine.id), 'the snapshot holds the new order');
      await api('PATCH', `/api/orders/${mine.id}`, { status: 'shipped' });
      await until(live, () => !live.rows.has(mine.id), 'the shipped order leaves');
      await api('PATCH', `/api/orders/${mine.id}`, { status: 'pending' });
      await until(live, () => live.rows.has(mine.id), 'it enters again');
      await api('PATCH', `/api/orders/${mine.id}`, { product_name: 'q' });
      await until(live, () => live.rows.get(mine.id)?.product_name === 'q', 'it updates');
      // Drop the stream: the view resumes from its position and loses nothing.
      live._stop();
      live._retry();
      const other = await api('POST', '/api/orders', { customer_name: `${transport} second`, product_name: 'p' });
      await api('DELETE', `/api/orders/${mine.id}`);
      await until(live, () => live.rows.has(other.id) && !live.rows.has(mine.id), 'changes made while away');
      const expected = await pendingOrders();
      await until(live, () => live.rows.size === expected.size, 'every pending order');
      assert.deepEqual(live.rows, expected);
      assert.ok(seen.enter >= 2 && seen.leave >= 2 && seen.update >= 1, JSON.stringify(seen));
    } finally {
      live.close();
    }
  });
}
