// The UI on live views: status tabs and the customer search are server-side filtered
// views that stay exact while another page and SQL move rows in and out, and a table
// of 100,000 orders paints its first rows quickly and scrolls to its last one.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import {
  Gateway, connectDb, dbOrders, diffOrders, firstRowTime, freePort, launchBrowser, pageBase, pageOrders, waitUntil,
} from './harness.mjs';

const WAIT = 10_000;

const row = (page, id) => page.locator(`#orders-body tr[data-id="${id}"]`);

/** Waits until `page` shows exactly the orders `WHERE <where>`, and its total says so. */
async function waitShows(page, db, where, args = []) {
  let diff = 'not compared yet';
  try {
    await waitUntil(async () => {
      const want = await dbOrders(db, where, args);
      diff = diffOrders(await pageOrders(page), want);
      if (diff === null && await page.textContent('#count-total') !== String(want.length)) {
        diff = `#count-total ${await page.textContent('#count-total')}, want ${want.length}`;
      }
      return diff === null;
    }, { timeout: WAIT, interval: 100, message: `the page to show the orders WHERE ${where}` });
  } catch (err) {
    throw new Error(`${err.message}\nthe page differs from SELECT * FROM orders WHERE ${where} (${args}): ${diff}`);
  }
}

/** Searches for `customer` and waits until that view is live (its rows loaded). */
async function search(page, customer) {
  await page.fill('#customer-search', customer);
  await page.waitForFunction((c) => new URL(location.href).searchParams.get('customer') === (c || null)
    && document.getElementById('conn-status').dataset.state === 'live', customer, { timeout: WAIT });
}

/** Waits until row `id` is drawn with the entering highlight. */
function waitEnters(page, id) {
  return page.waitForFunction((oid) => document.querySelector(`#orders-body tr[data-id="${oid}"]`)?.classList.contains('row-new'), id, { timeout: WAIT });
}

/** Waits until row `id` is fading out (it has left the view). */
function waitLeaves(page, id) {
  return page.waitForFunction((oid) => document.querySelector(`#orders-body tr[data-leaving-id="${oid}"].row-leaving`), id, { timeout: WAIT });
}

async function insert(db, customer, product, status) {
  const { rows: [r] } = await db.query('INSERT INTO orders (customer_name, product_name, status) VALUES ($1, $2, $3) RETURNING id', [customer, product, status]);
  return Number(r.id);
}

for (const transport of ['ws', 'sse']) {
  describe(`UI views over ${transport}`, () => {
    let db;
    let browser;
    let gw;
    let base;
    let V; // the page with a tab or a search open
    let W; // another page, on All, that writes through the UI
    const pageErrors = [];
    let setupError = null;
    const scenario = (name, fn) => test(name, async () => {
      if (setupError) throw new Error(`set-up failed: ${setupError.message}`);
      try {
        await fn();
      } catch (err) {
        err.message += `\n--- gateway log (tail) ---\n${gw?.tail(3000) ?? ''}`;
        throw err;
      }
    });

    test('the gateway starts and both pages open', async () => {
      try {
        db = await connectDb();
        browser = await launchBrowser();
        gw = await new Gateway(await freePort()).start();
        base = await pageBase(gw);
        await db.query('TRUNCATE orders');
        await db.query(`INSERT INTO orders (customer_name, product_name, status) VALUES
          ('Ada Lovelace', 'Notes on the engine', 'pending'), ('Ada Lovelace', 'Loom cards', 'shipped'),
          ('Grace Hopper', 'Nanosecond wire', 'pending'), ('Alan Turing', 'Tape', 'delivered'),
          ('Grace Hopper', 'Moth', 'shipped')`);
        for (const name of ['V', 'W']) {
          const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
          const page = await ctx.newPage();
          page.on('pageerror', (err) => pageErrors.push(`${name}: ${err.message}`));
          await page.goto(`${base.url}/?transport=${transport}`);
          await page.waitForSelector('#conn-status[data-state="live"]', { timeout: WAIT });
          if (name === 'V') V = page; else W = page;
        }
      } catch (err) {
        setupError = err;
        throw err;
      }
    });

    after(async () => {
      await browser?.close().catch(() => {});
      await base?.stop();
      await gw?.stop();
      await db?.end().catch(() => {});
    });

    scenario('the Pending tab shows exactly the pending orders while another page and SQL move them', async () => {
      await V.click('.view-tab[data-status="pending"]');
      assert.equal(await V.getAttribute('.view-tab[data-status="pending"]', 'aria-selected'), 'true');
      await waitShows(V, db, "status = 'pending'");
      assert.match(V.url(), /status=pending/);
      assert.equal(await V.textContent('#count-shipped'), '0');

      // Another page ships a pending order: it leaves this view.
      const { rows: [p] } = await db.query("SELECT id FROM orders WHERE status = 'pending' ORDER BY id LIMIT 1");
      const shipped = Number(p.id);
      await row(W, shipped).locator('select.row-status').selectOption('shipped');
      await waitLeaves(V, shipped);
      await waitShows(V, db, "status = 'pending'");

      // SQL moves a shipped order back: it enters, highlighted.
      await db.query("UPDATE orders SET status = 'pending', updated_at = now() WHERE id = $1", [shipped]);
      await waitEnters(V, shipped);
      // A new pending order enters; a new shipped one does not; a deleted pending one leaves.
      const fresh = await insert(db, 'Edsger Dijkstra', 'Semaphore', 'pending');
      const other = await insert(db, 'Edsger Dijkstra', 'Goto letter', 'shipped');
      await waitEnters(V, fresh);
      await db.query('DELETE FROM orders WHERE id = $1', [shipped]);
      await waitLeaves(V, shipped);
      await waitShows(V, db, "status = 'pending'");
      assert.equal(await row(V, other).count(), 0);
      // An update that keeps the row in the view changes it in place.
      await db.query("UPDATE orders SET product_name = 'Semaphore, boxed' WHERE id = $1", [fresh]);
      await waitShows(V, db, "status = 'pending'");

      for (const status of ['shipped', 'delivered', 'all']) {
        await V.click(`.view-tab[data-status="${status}"]`);
        await waitShows(V, db, status === 'all' ? 'true' : 'status = $1', status === 'all' ? [] : [status]);
      }
    });

    scenario('the customer search shows exactly that customer\'s orders, within the tab, as they change', async () => {
      await search(V, 'Ada Lovelace');
      await waitShows(V, db, 'customer_name = $1', ['Ada Lovelace']);
      assert.match(V.url(), /customer=Ada\+Lovelace/);
      await V.click('.view-tab[data-status="pending"]');
      await waitShows(V, db, "customer_name = $1 AND status = 'pending'", ['Ada Lovelace']);

      // Another page creates an order for Ada with the form: it enters.
      await W.fill('#order-form [name="customer_name"]', 'Ada Lovelace');
      await W.fill('#order-form [name="product_name"]', 'Bernoulli table');
      const posted = W.waitForResponse((r) => r.url().endsWith('/api/orders') && r.request().method() === 'POST');
      await W.click('#order-form button[type="submit"]');
      const created = await (await posted).json();
      await waitEnters(V, created.id);
      // SQL renames it: it leaves.
      await db.query("UPDATE orders SET customer_name = 'Charles Babbage' WHERE id = $1", [created.id]);
      await waitLeaves(V, created.id);
      await waitShows(V, db, "customer_name = $1 AND status = 'pending'", ['Ada Lovelace']);

      // A name nobody has: an empty view that says so, and fills when one arrives.
      await search(V, 'Nobody Yet');
      await waitShows(V, db, "customer_name = $1 AND status = 'pending'", ['Nobody Yet']);
      assert.equal(await V.isVisible('#orders-empty'), true);
      const nobody = await insert(db, 'Nobody Yet', 'Placeholder', 'pending');
      await waitEnters(V, nobody);
      await waitShows(V, db, "customer_name = $1 AND status = 'pending'", ['Nobody Yet']);

      await search(V, '');
      await V.click('.view-tab[data-status="all"]');
      await waitShows(V, db, 'true');
    });

    if (transport === 'ws') {
      scenario('with 100,000 orders the first rows show within 5 s, few rows are drawn and the end scrolls into view', async () => {
        await db.query('TRUNCATE orders');
        await db.query(`INSERT INTO orders (customer_name, product_name, status)
          SELECT 'Customer ' || (i % 997), 'Product ' || i, (ARRAY['pending','shipped','delivered'])[1 + i % 3]
          FROM generate_series(1, 100000) AS i`);
        const { ms, snapshotMs, page, ctx } = await firstRowTime(browser, `${base.url}/?transport=${transport}`);
        try {
          console.log(`# 100,000 orders: first row painted ${Math.round(ms)} ms after navigation, whole view ${Math.round(snapshotMs)} ms`);
          assert.ok(ms < 5000, `first row after ${Math.round(ms)} ms`);
          await page.waitForFunction(() => document.getElementById('count-total').textContent === '100000', null, { timeout: WAIT });
          const drawn = await page.locator('#orders-body tr[data-id]').count();
          assert.ok(drawn > 0 && drawn < 200, `${drawn} rows drawn`);

          const { rows: [{ max }] } = await db.query('SELECT max(id)::int AS max FROM orders');
          await page.evaluate(() => { const s = document.getElementById('orders-scroll'); s.scrollTop = s.scrollHeight; });
          await row(page, max).waitFor({ timeout: WAIT });
          const inView = await page.evaluate((id) => {
            const s = document.getElementById('orders-scroll').getBoundingClientRect();
            const r = document.querySelector(`#orders-body tr[data-id="${id}"]`).getBoundingClientRect();
            return r.top >= s.top && r.bottom <= s.bottom + 1;
          }, max);
          assert.ok(inView, 'the last order is on screen at the end of the scroll');
          // Still live down there. The gateway reads the 100,000 inserts from
          // change_log before anything after them: wait for that first (on a loaded
          // 2-core machine it can take longer than the page's own wait), so that
          // the wait below measures the page, not the source's bulk read.
          const { rows: [{ logged }] } = await db.query('SELECT max(id)::text AS logged FROM realtime.change_log');
          const caughtUp = Date.now();
          await waitUntil(async () => {
            const ready = await (await fetch(`${gw.url}/readyz`)).json();
            return BigInt(ready.head ?? 0) >= BigInt(logged);
          }, { timeout: 120_000, interval: 100, message: `the gateway's head to reach ${logged}` });
          console.log(`# 100,000 orders: the gateway's source reached them ${Date.now() - caughtUp} ms after the end was on screen`);
          await db.query("UPDATE orders SET product_name = 'The last one' WHERE id = $1", [max]);
          await page.waitForFunction((id) => document.querySelector(`#orders-body tr[data-id="${id}"] [data-col="product_name"]`)?.textContent === 'The last one', max, { timeout: WAIT });
        } finally {
          await ctx.close();
          // Leave a small change log behind: later suites prune it in batches.
          await db.query('TRUNCATE orders');
          await db.query('SELECT realtime.prune(NULL, 0, 1000000)');
        }
      });
    }

    scenario('no script errors on either page', () => {
      assert.deepEqual(pageErrors, []);
    });
  });
}
