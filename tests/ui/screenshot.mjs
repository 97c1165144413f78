// Saves docs/screenshot-light.png (the All tab) and docs/screenshot-dark.png (the
// Pending tab) (1280x800) of the UI with a few realistic orders. Same environment as run.mjs: ROWCAST_BIN, DATABASE_URL
// (a test database: its orders are replaced). Optional: SCREENSHOT_WIDTH/HEIGHT,
// SCREENSHOT_DIR.
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Gateway, REPO, connectDb, freePort, launchBrowser, pageBase } from './harness.mjs';

const ORDERS = [
  ['Amara Okafor', 'Ergonomic split keyboard', 'delivered', '3 hours'],
  ['Lukas Novák', 'USB-C docking station', 'delivered', '2 hours 10 minutes'],
  ['Sofia Marino', 'Noise-cancelling headphones', 'shipped', '95 minutes'],
  ['Hiroshi Tanaka', '27" 4K monitor', 'shipped', '48 minutes'],
  ['Priya Raman', 'Standing desk frame', 'pending', '31 minutes'],
  ['Mateo García', 'Mechanical pencil set', 'shipped', '17 minutes'],
  ['Chloé Dubois', 'Espresso grinder', 'pending', '6 minutes'],
  ['Noah Fischer', 'Trail running shoes', 'pending', '40 seconds'],
];

const width = Number(process.env.SCREENSHOT_WIDTH || 1280);
const height = Number(process.env.SCREENSHOT_HEIGHT || 800);
const outDir = process.env.SCREENSHOT_DIR || path.join(REPO, 'docs');

const db = await connectDb();
let gw;
let base;
let browser;
try {
  gw = new Gateway(await freePort());
  await gw.start(); // applies the migrations, so orders exists below
  base = await pageBase(gw);
  await db.query('TRUNCATE orders');
  browser = await launchBrowser();
  await mkdir(outDir, { recursive: true });

  for (const colorScheme of ['light', 'dark']) {
    // Fresh rows per shot so the feed shows the same recent activity in both.
    await db.query('DELETE FROM orders');
    const ctx = await browser.newContext({ viewport: { width, height }, colorScheme, deviceScaleFactor: 1 });
    const page = await ctx.newPage();
    const tab = colorScheme === 'dark' ? 'pending' : 'all';
    await page.goto(`${base.url}/?transport=ws&status=${tab}`);
    await page.waitForSelector('#conn-status[data-state="live"]', { timeout: 10_000 });
    for (const [customer, product, status, age] of ORDERS) {
      await db.query(
        `INSERT INTO orders (customer_name, product_name, status, updated_at) VALUES ($1, $2, $3, now() - $4::interval)`,
        [customer, product, status, age],
      );
      await sleep(60);
    }
    // A little live activity for the feed and the highlight.
    await db.query(`UPDATE orders SET status = 'delivered', updated_at = now() WHERE customer_name = 'Sofia Marino'`);
    const shown = ORDERS.filter(([, , status]) => tab === 'all' || status === tab).length;
    await page.waitForFunction((n) => document.querySelectorAll('#orders-body tr[data-id]').length === n, shown, { timeout: 10_000 });
    await sleep(2000); // let the insert highlights fade, keep the last flash subtle
    const file = path.join(outDir, `screenshot-${colorScheme}.png`);
    await page.screenshot({ path: file });
    console.log(`wrote ${path.relative(process.cwd(), file)}`);
    await ctx.close();
  }
} finally {
  await browser?.close().catch(() => {});
  await base?.stop().catch(() => {});
  await gw?.stop().catch(() => {});
  await db.end().catch(() => {});
}
