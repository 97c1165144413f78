// End-to-end tests of the rowcast web UI: a real gateway, a real database and two
// headless Chromium pages per transport. Run: `node tests/ui/run.mjs` with
// ROWCAST_BIN (the gateway binary) and DATABASE_URL (a migrated, empty test database).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  Gateway, connectDb, dbOrders, diffOrders, freePort, launchBrowser, pageBase, pageOrders, waitUntil,
} from './harness.mjs';
// The client's unit tests (fake sockets, no gateway) run in the same process.
import './client.test.mjs';
// Status tabs, the customer search and the 100,000-order table.
import './views.mjs';

const WAIT = 10_000; // bound of every wait
const PROPAGATION = 1_000; // a change made in one place shows everywhere within this

let browser;
let db;

let globalSetupError = null;

before(async () => {
  // A failure here is reported by each suite's set-up test (a failing hook would only
  // cancel the tests, and the closing summary would read `fail 0`).
  try {
    db = await connectDb();
    browser = await launchBrowser();
  } catch (err) {
    globalSetupError = err;
  }
});

after(async () => {
  await browser?.close().catch(() => {});
  await db?.end().catch(() => {});
});

const row = (page, id) => page.locator(`#orders-body tr[data-id="${id}"]`);
const cellOf = (page, id, col) => row(page, id).locator(`[data-col="${col}"]`);

async function waitLive(page, timeout = WAIT) {
  await page.waitForSelector('#conn-status[data-state="live"]', { timeout });
}

/** Waits until the page shows exactly the database's orders. */
async function waitMatchesDb(page, label, timeout = WAIT) {
  let diff = 'not compared yet';
  try {
    await waitUntil(async () => {
      const want = await dbOrders(db);
      diff = diffOrders(await pageOrders(page), want);
      // The counts are drawn on the next animation frame, like the rows: wait for both.
      const total = await page.textContent('#count-total');
      if (diff === null && total !== String(want.length)) diff = `#count-total ${total}, want ${want.length}`;
      return diff === null;
    }, { timeout, interval: 100, message: `${label} to show the table's rows` });
  } catch (err) {
    throw new Error(`${err.message}\n${label} differs from SELECT * FROM orders: ${diff}`);
  }
}

/** Creates an order through the REST API (not the UI) and returns it. */
async function apiCreate(gw, order) {
  const res = await fetch(`${gw.url}/api/orders`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(order),
  });
  assert.equal(res.status, 201, `POST /api/orders: ${res.status} ${await res.clone().text()}`);
  return res.json();
}

async function orderCount() {
  const { rows } = await db.query('SELECT count(*)::int AS n FROM orders');
  return rows[0].n;
}

for (const transport of ['ws', 'sse']) {
  describe(`UI over ${transport}`, () => {
    let gw;
    let base;
    let contexts = [];
    let A;
    let B;
    const pageErrors = [];

    let setupError = null;
    // Set-up runs as a test (not a hook) so that a gateway that fails to start is
    // counted as a failure, and every scenario after it fails fast saying why.
    const scenario = (name, fn) => test(name, async (t) => {
      if (setupError) throw new Error(`set-up failed: ${setupError.message}`);
      try {
        return await fn(t);
      } catch (err) {
        err.message += `\n--- gateway log (tail) ---\n${gw?.tail(3000) ?? ''}`;
        throw err;
      }
    });

    test('the gateway starts and both pages go live', async () => {
      try {
        if (globalSetupError) throw globalSetupError;
        gw = new Gateway(await freePort());
        await gw.start();
        base = await pageBase(gw);
        await db.query('TRUNCATE orders'); // after start-up: the gateway applies the migrations
        for (const name of ['A', 'B']) {
          const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
          contexts.push(ctx);
          const page = await ctx.newPage();
          page.on('pageerror', (err) => pageErrors.push(`${name}: ${err.message}`));
          page.on('console', (msg) => { if (msg.type() === 'error') pageErrors.push(`${name} console: ${msg.text()}`); });
          await page.goto(`${base.url}/?transport=${transport}`);
          if (name === 'A') A = page; else B = page;
        }
        await Promise.all([waitLive(A), waitLive(B)]);
      } catch (err) {
        setupError = err;
        throw err;
      }
    });

    after(async () => {
      for (const ctx of contexts) await ctx.close().catch(() => {});
      contexts = [];
      await base?.stop();
      const stopped = await gw?.stop();
      if (stopped && stopped.code !== 0) console.log(`# gateway exit at the end: ${JSON.stringify(stopped)}`);
    });

    scenario('both pages say they are live over the requested transport', async () => {
      for (const page of [A, B]) {
        assert.equal(await page.textContent('#transport'), transport);
        assert.equal(await page.getAttribute('#conn-status', 'data-state'), 'live');
        assert.match(await page.textContent('#last-event-id'), /^\d+$/);
      }
    });

    scenario('an order created with the form in A appears in B within a second', async () => {
      const customer = `Grace Hopper (${transport})`;
      await A.fill('#order-form [name="customer_name"]', customer);
      await A.fill('#order-form [name="product_name"]', 'COBOL reference manual');
      await A.selectOption('#order-form [name="status"]', 'shipped');
      const posted = A.waitForResponse((r) => r.url().endsWith('/api/orders') && r.request().method() === 'POST');
      const t0 = Date.now();
      await A.click('#order-form button[type="submit"]');
      const res = await posted;
      assert.equal(res.status(), 201);
      const created = await res.json();
      await row(B, created.id).waitFor({ timeout: WAIT });
      const latency = Date.now() - t0;
      assert.ok(latency <= PROPAGATION, `row reached B after ${latency} ms`);
      assert.equal(await cellOf(B, created.id, 'customer_name').textContent(), customer);
      assert.equal(await cellOf(B, created.id, 'product_name').textContent(), 'COBOL reference manual');
      assert.equal(await cellOf(B, created.id, 'status').locator('select').inputValue(), 'shipped');
      await row(A, created.id).waitFor({ timeout: WAIT });
      assert.equal(await A.inputValue('#order-form [name="customer_name"]'), '', 'form is cleared after success');
      await waitMatchesDb(A, 'page A');
      await waitMatchesDb(B, 'page B');
      assert.equal(await B.textContent('#count-total'), String(await orderCount()));
    });

    scenario('a status change made with the row select in B appears in A', async () => {
      const order = await apiCreate(gw, { customer_name: 'Alan Turing', product_name: 'Bombe spare rotor', status: 'pending' });
      await Promise.all([row(A, order.id).waitFor({ timeout: WAIT }), row(B, order.id).waitFor({ timeout: WAIT })]);
      const patched = B.waitForResponse((r) => r.url().endsWith(`/api/orders/${order.id}`) && r.request().method() === 'PATCH');
      const t0 = Date.now();
      await row(B, order.id).locator('select.row-status').selectOption('delivered');
      assert.equal((await patched).status(), 200);
      await A.waitForFunction(
        (id) => document.querySelector(`#orders-body tr[data-id="${id}"] [data-col="status"] select`)?.value === 'delivered',
        order.id, { timeout: WAIT },
      );
      const latency = Date.now() - t0;
      assert.ok(latency <= PROPAGATION, `status reached A after ${latency} ms`);
      const { rows } = await db.query('SELECT status::text AS status FROM orders WHERE id = $1', [order.id]);
      assert.equal(rows[0].status, 'delivered');
      await waitMatchesDb(A, 'page A');
      await waitMatchesDb(B, 'page B');
    });

    scenario('a delete in A disappears from B', async () => {
      const order = await apiCreate(gw, { customer_name: 'Ada Lovelace', product_name: 'Difference engine gear', status: 'shipped' });
      await Promise.all([row(A, order.id).waitFor({ timeout: WAIT }), row(B, order.id).waitFor({ timeout: WAIT })]);
      const deleted = A.waitForResponse((r) => r.url().endsWith(`/api/orders/${order.id}`) && r.request().method() === 'DELETE');
      const t0 = Date.now();
      await row(A, order.id).locator('button.row-delete').click();
      assert.equal((await deleted).status(), 204);
      await row(B, order.id).waitFor({ state: 'detached', timeout: WAIT });
      const latency = Date.now() - t0;
      assert.ok(latency <= PROPAGATION, `delete reached B after ${latency} ms`);
      await row(A, order.id).waitFor({ state: 'detached', timeout: WAIT });
      const { rows } = await db.query('SELECT 1 FROM orders WHERE id = $1', [order.id]);
      assert.equal(rows.length, 0);
      await waitMatchesDb(A, 'page A');
      await waitMatchesDb(B, 'page B');
    });

    scenario('a direct SQL insert and update appear in both pages', async () => {
      const { rows: [ins] } = await db.query(
        "INSERT INTO orders (customer_name, product_name, status) VALUES ('Edsger Dijkstra', 'Semaphore kit', 'pending') RETURNING id",
      );
      const id = Number(ins.id);
      await Promise.all([row(A, id).waitFor({ timeout: WAIT }), row(B, id).waitFor({ timeout: WAIT })]);
      const t0 = Date.now();
      await db.query("UPDATE orders SET status = 'shipped', product_name = 'Semaphore kit, 2nd edition', updated_at = now() WHERE id = $1", [id]);
      for (const page of [A, B]) {
        await page.waitForFunction((oid) => {
          const tr = document.querySelector(`#orders-body tr[data-id="${oid}"]`);
          return tr?.querySelector('[data-col="status"] select')?.value === 'shipped'
            && tr.querySelector('[data-col="product_name"]').textContent === 'Semaphore kit, 2nd edition';
        }, id, { timeout: WAIT });
      }
      const latency = Date.now() - t0;
      assert.ok(latency <= PROPAGATION, `SQL update reached both pages after ${latency} ms`);
      await waitMatchesDb(A, 'page A');
      await waitMatchesDb(B, 'page B');
    });

    scenario('after a gateway restart both pages resume without a reload and show exactly the table', async () => {
      // Something to update and delete while the gateway is down.
      const keep = await apiCreate(gw, { customer_name: 'Barbara Liskov', product_name: 'CLU compiler', status: 'pending' });
      const doomed = await apiCreate(gw, { customer_name: 'Ken Thompson', product_name: 'PDP-7 tape', status: 'pending' });
      await Promise.all([A, B].map((p) => row(p, doomed.id).waitFor({ timeout: WAIT })));
      for (const page of [A, B]) await page.evaluate(() => { window.__noReload = true; });

      const stopped = await gw.stop();
      assert.ok(stopped && !stopped.killedAfterTimeout, `gateway did not exit on SIGTERM: ${JSON.stringify(stopped)}`);
      await Promise.all([A, B].map((p) => p.waitForSelector('#conn-status[data-state="reconnecting"]', { timeout: WAIT })));

      await db.query("INSERT INTO orders (customer_name, product_name, status) VALUES ('Donald Knuth', 'TAOCP vol. 4B', 'pending'), ('Frances Allen', 'Optimizing compiler', 'shipped'), ('John Backus', 'FORTRAN card deck', 'delivered')");
      await db.query("UPDATE orders SET status = 'delivered', updated_at = now() WHERE id = $1", [keep.id]);
      await db.query('DELETE FROM orders WHERE id = $1', [doomed.id]);

      for (const page of [A, B]) {
        assert.equal(await page.getAttribute('#conn-status', 'data-state'), 'reconnecting', 'still reconnecting while the gateway is down');
      }

      await gw.start();
      await Promise.all([waitLive(A, 15_000), waitLive(B, 15_000)]);
      await waitMatchesDb(A, 'page A');
      await waitMatchesDb(B, 'page B');
      for (const page of [A, B]) {
        assert.equal(await page.evaluate(() => window.__noReload), true, 'the page was not reloaded');
        assert.equal(await page.textContent('#count-total'), String(await orderCount()));
        assert.equal(await row(page, doomed.id).count(), 0);
      }
    });

    scenario('when the history a page needs was pruned, it gets reset, reloads and shows exactly the table', async () => {
      const victim = await apiCreate(gw, { customer_name: 'Dennis Ritchie', product_name: 'K&R, first printing', status: 'pending' });
      await Promise.all([A, B].map((p) => row(p, victim.id).waitFor({ timeout: WAIT })));
      for (const page of [A, B]) await page.evaluate(() => { window.__noReload = true; });
      const stopped = await gw.stop();
      assert.ok(stopped && !stopped.killedAfterTimeout, `gateway did not exit on SIGTERM: ${JSON.stringify(stopped)}`);
      await Promise.all([A, B].map((p) => p.waitForSelector('#conn-status[data-state="reconnecting"]', { timeout: WAIT })));
      // Writes the pages have not seen, then retention removes them from the change log:
      // the pages' resume point is now below the pruned horizon.
      await db.query("INSERT INTO orders (customer_name, product_name, status) VALUES ('Bjarne Stroustrup', 'C with Classes draft', 'shipped')");
      await db.query("UPDATE orders SET status = 'delivered' WHERE id = $1", [victim.id]);
      await db.query('SELECT realtime.prune(NULL, 0, 100000)');
      await gw.start();
      await Promise.all([waitLive(A, 15_000), waitLive(B, 15_000)]);
      await waitMatchesDb(A, 'page A');
      await waitMatchesDb(B, 'page B');
      for (const page of [A, B]) {
        assert.equal(await page.evaluate(() => window.__noReload), true, 'the page was not reloaded');
        assert.ok(await page.locator('#feed .op', { hasText: 'RESET' }).count() >= 1, 'the feed shows the reset');
      }
      // And it is live again from there.
      await db.query("UPDATE orders SET product_name = 'K&R, second printing' WHERE id = $1", [victim.id]);
      for (const page of [A, B]) {
        await page.waitForFunction((id) => document.querySelector(`#orders-body tr[data-id="${id}"] [data-col="product_name"]`)?.textContent === 'K&R, second printing', victim.id, { timeout: WAIT });
      }
    });

    scenario('a page whose browser goes offline says offline, then catches up when back online', async () => {
      const ctx = A.context();
      await ctx.setOffline(true);
      await A.waitForSelector('#conn-status[data-state="offline"]', { timeout: WAIT });
      await db.query("INSERT INTO orders (customer_name, product_name, status) VALUES ('Hedy Lamarr', 'Frequency-hopping patent', 'pending')");
      await B.waitForFunction(() => [...document.querySelectorAll('#orders-body [data-col="customer_name"]')].some((td) => td.textContent === 'Hedy Lamarr'), null, { timeout: WAIT });
      assert.equal(await A.getAttribute('#conn-status', 'data-state'), 'offline');
      await ctx.setOffline(false);
      await waitLive(A);
      await waitMatchesDb(A, 'page A');
      await waitMatchesDb(B, 'page B');
    });

    scenario('invalid form input shows the API message next to the field and creates nothing', async () => {
      const before = await orderCount();
      const form = '#order-form';

      const cases = [
        { customer: '   ', product: 'Something fine', field: 'customer_name' },
        { customer: 'Linus Torvalds', product: 'x'.repeat(300), field: 'product_name' },
      ];
      for (const c of cases) {
        await A.fill(`${form} [name="customer_name"]`, c.customer);
        await A.fill(`${form} [name="product_name"]`, c.product);
        const posted = A.waitForResponse((r) => r.url().endsWith('/api/orders') && r.request().method() === 'POST');
        await A.click(`${form} button[type="submit"]`);
        const res = await posted;
        assert.equal(res.status(), 422, `${c.field}: HTTP ${res.status()}`);
        const body = await res.json();
        assert.equal(body?.error?.field, c.field, `422 body names the field: ${JSON.stringify(body)}`);
        assert.ok(body.error.message, 'the error has a message');
        await A.waitForFunction(([f, m]) => document.getElementById(`error-${f}`)?.textContent === m,
          [c.field, body.error.message], { timeout: WAIT });
        assert.equal(await A.getAttribute(`${form} [name="${c.field}"]`, 'aria-invalid'), 'true');
        // The error of the other field is not shown.
        const other = c.field === 'customer_name' ? 'product_name' : 'customer_name';
        assert.equal(await A.textContent(`#error-${other}`), '');
      }
      assert.equal(await orderCount(), before, 'no order was created');
      await waitMatchesDb(A, 'page A');
      await waitMatchesDb(B, 'page B');
    });

    scenario('the transport switch reconnects over the other transport and back, rows intact', async () => {
      const other = transport === 'ws' ? 'sse' : 'ws';
      await A.click('#transport-switch');
      await A.waitForFunction((t) => document.getElementById('transport').textContent === t, other, { timeout: WAIT });
      await waitLive(A);
      assert.match(A.url(), new RegExp(`transport=${other}`));
      const { rows: [ins] } = await db.query(
        "INSERT INTO orders (customer_name, product_name, status) VALUES ('Margaret Hamilton', 'Apollo guidance listing', 'shipped') RETURNING id",
      );
      await row(A, Number(ins.id)).waitFor({ timeout: WAIT });
      await waitMatchesDb(A, 'page A');
      await A.click('#transport-switch');
      await A.waitForFunction((t) => document.getElementById('transport').textContent === t, transport, { timeout: WAIT });
      await waitLive(A);
      await waitMatchesDb(A, 'page A');
    });

    scenario('TRUNCATE clears both pages', async () => {
      await db.query('TRUNCATE orders');
      for (const page of [A, B]) {
        // Leaving rows lose data-id at once; the counts follow on the next frame.
        await page.waitForFunction(() => document.querySelectorAll('#orders-body tr[data-id]').length === 0
          && document.getElementById('count-total').textContent === '0', null, { timeout: WAIT });
      }
    });

    if (transport === 'ws') {
      scenario('at 375 px the page fits, works from the keyboard and remembers the theme', async () => {
        const ctx = await browser.newContext({ viewport: { width: 375, height: 740 }, colorScheme: 'light' });
        contexts.push(ctx);
        const page = await ctx.newPage();
        page.on('pageerror', (err) => pageErrors.push(`mobile: ${err.message}`));
        await page.goto(`${base.url}/?transport=${transport}`);
        await waitLive(page);
        const order = await apiCreate(gw, { customer_name: 'Radia Perlman', product_name: 'Spanning tree poster', status: 'pending' });
        await row(page, order.id).waitFor({ timeout: WAIT });
        assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth), 'no horizontal scrolling at 375 px');
        const box = await row(page, order.id).locator('button.row-delete').boundingBox();
        assert.ok(box && box.x >= 0 && box.x + box.width <= 375, `delete button on screen: ${JSON.stringify(box)}`);

        // Keyboard: the form's fields take focus with a visible outline and submit with Enter.
        await page.focus('#order-form [name="customer_name"]');
        await page.keyboard.type('Tim Berners-Lee');
        await page.keyboard.press('Tab');
        assert.equal(await page.evaluate(() => document.activeElement?.name), 'product_name');
        const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
        assert.notEqual(outline, 'none', 'focused field shows a focus outline');
        await page.keyboard.type('WorldWideWeb floppy');
        const posted = page.waitForResponse((r) => r.url().endsWith('/api/orders') && r.request().method() === 'POST');
        await page.keyboard.press('Enter');
        const created = await (await posted).json();
        await row(page, created.id).waitFor({ timeout: WAIT });

        // Labels for screen readers.
        for (const name of ['customer_name', 'product_name', 'status']) {
          assert.ok(await page.locator(`#order-form [name="${name}"]`).evaluate((el) => el.labels.length > 0), `${name} has a label`);
        }
        assert.equal(await page.getAttribute('#conn-status', 'aria-live'), 'polite');
        assert.equal(await page.getAttribute('#feed', 'aria-live'), 'polite');

        // Theme: the toggle flips to dark and the choice survives a reload.
        const bg = () => page.evaluate(() => getComputedStyle(document.body).backgroundColor);
        const light = await bg();
        await page.click('#theme-toggle');
        assert.equal(await page.getAttribute('html', 'data-theme'), 'dark');
        assert.notEqual(await bg(), light);
        await page.reload();
        assert.equal(await page.getAttribute('html', 'data-theme'), 'dark');
        assert.equal(await page.getAttribute('#theme-toggle', 'aria-pressed'), 'true');
        await ctx.close();
        contexts = contexts.filter((c) => c !== ctx);
      });
    }

    scenario('no script errors on either page', () => {
      assert.deepEqual(pageErrors.filter((e) => !/Failed to load resource|ERR_CONNECTION_REFUSED|WebSocket connection/.test(e)), []);
    });
  });
}
