// Measures how soon the UI shows its first rows with 100,000 orders: the time from
// navigation to the first order row painted (the page's `rowcast:first-row` mark), in
// Debian's headless Chromium, over fresh browser contexts (no cache). The table is
// refilled with 100,000 orders by SQL first. Run with ROWCAST_BIN (use the release
// build) and DATABASE_URL (a dedicated database: it is truncated):
//   ROWCAST_BIN=target/release/rowcast DATABASE_URL=postgres://… node tests/ui/first-paint.mjs [runs] [ws|sse]
import { Gateway, connectDb, firstRowTime, freePort, launchBrowser } from './harness.mjs';

const runs = Number(process.argv[2] ?? 5);
const transport = process.argv[3] ?? 'ws';
const db = await connectDb();
const gw = await new Gateway(await freePort()).start();
const browser = await launchBrowser();
try {
  await db.query('TRUNCATE orders');
  await db.query(`INSERT INTO orders (customer_name, product_name, status)
    SELECT 'Customer ' || (i % 997), 'Product ' || i, (ARRAY['pending','shipped','delivered'])[1 + i % 3]
    FROM generate_series(1, 100000) AS i`);
  const times = [];
  const snapshots = [];
  for (let i = 0; i < runs; i++) {
    const { ms, snapshotMs, page, ctx } = await firstRowTime(browser, `${gw.url}/?transport=${transport}`);
    const total = await page.textContent('#count-total');
    await ctx.close();
    times.push(ms);
    snapshots.push(snapshotMs);
    console.log(`run ${i + 1}: first row painted ${Math.round(ms)} ms after navigation, whole view (${total} orders) ${Math.round(snapshotMs)} ms`);
  }
  times.sort((a, b) => a - b);
  snapshots.sort((a, b) => a - b);
  console.log(`whole view: median ${Math.round(snapshots[snapshots.length >> 1])} ms, max ${Math.round(snapshots[snapshots.length - 1])} ms`);
  console.log(`first row: median ${Math.round(times[times.length >> 1])} ms, min ${Math.round(times[0])} ms, max ${Math.round(times[times.length - 1])} ms over ${runs} runs (${transport})`);
} finally {
  await browser.close();
  await gw.stop();
  await db.end();
}
