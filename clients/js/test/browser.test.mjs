// The view in headless Chromium (Debian's /usr/bin/chromium, or CHROMIUM_PATH), on a
// page of the gateway itself (ROWCAST_URL): the module is loaded into the page, and a
// view of `status=eq.pending` must follow REST writes on both transports.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { chromium } from 'playwright-core';

const url = process.env.ROWCAST_URL;
const source = await readFile(new URL('../index.js', import.meta.url), 'utf8');
let browser;

before(async () => {
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run'],
  });
});

after(async () => {
  await browser?.close();
});

async function api(method, path, body) {
  const response = await fetch(url + path, {
    method,
    headers: body ? { 'Content-Type': 'application/json' } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  assert.ok(response.ok, `${method} ${path}: HTTP ${response.status}`);
  return response.status === 204 ? null : response.json();
}

for (const transport of ['ws', 'sse']) {
  test(`in Chromium a ${transport} view follows rows entering and leaving`, async () => {
    // The UI's Content-Security-Policy forbids loading a module from a blob; the test
    // page is the gateway's own origin, so the view's requests are same-origin.
    const context = await browser.newContext({ bypassCSP: true });
    const page = await context.newPage();
    try {
      await page.goto(url + '/');
      await page.evaluate(async ({ source, transport }) => {
        const blob = new Blob([source], { type: 'text/javascript' });
        const { view } = await import(URL.createObjectURL(blob));
        const live = view({ url: location.origin, table: 'orders', filter: 'status=eq.pending', transport });
        globalThis.pendingIds = () => [...live.rows.keys()].sort((a, b) => a - b);
        globalThis.viewStatus = () => live.status;
      }, { source, transport });
      await page.waitForFunction(() => globalThis.viewStatus() === 'live');
      const ids = () => page.evaluate(() => globalThis.pendingIds());
      const until = (predicate) =>
        page.waitForFunction(predicate, undefined, { timeout: 15_000, polling: 50 });
      const order = await api('POST', '/api/orders', { customer_name: 'Chromium', product_name: transport });
      await until(`globalThis.pendingIds().includes(${order.id})`);
      await api('PATCH', `/api/orders/${order.id}`, { status: 'delivered' });
      await until(`!globalThis.pendingIds().includes(${order.id})`);
      await api('PATCH', `/api/orders/${order.id}`, { status: 'pending' });
      await until(`globalThis.pendingIds().includes(${order.id})`);
      const pending = (await api('GET', '/api/orders')).filter((r) => r.status === 'pending').map((r) => r.id);
      assert.deepEqual(await ids(), pending);
    } finally {
      await context.close();
    }
  });
}
