// Shared pieces of the UI tests: the gateway child process, the browser, the database.
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { chromium } from 'playwright-core';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

/** The gateway binary: $ROWCAST_BIN, else the workspace's own build. */
export function gatewayBin() {
  if (process.env.ROWCAST_BIN) return process.env.ROWCAST_BIN;
  for (const p of ['target/debug/rowcast', 'target/release/rowcast']) {
    const full = path.join(REPO, p);
    if (existsSync(full)) return full;
  }
  throw new Error('set ROWCAST_BIN to the rowcast binary (none found under target/)');
}

export function databaseUrl() {
  const url = process.env.DATABASE_URL;
  if (!url) throw new Error('set DATABASE_URL to a dedicated, migrated, empty test database');
  return url;
}

/** A TCP port that was free a moment ago on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Polls `fn` until it returns a truthy value; throws `message` after `timeout` ms. */
export async function waitUntil(fn, { timeout = 10_000, interval = 50, message = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      const why = last instanceof Error ? `: ${last.message}` : '';
      throw new Error(`timed out after ${timeout} ms waiting for ${message}${why}`);
    }
    await sleep(interval);
  }
}

const running = new Set();
process.on('exit', () => {
  // Last resort when the runner dies: never leave a gateway behind.
  for (const child of running) {
    try { child.kill('SIGKILL'); } catch { /* gone */ }
  }
});

/** A gateway child process on a fixed port, restartable on the same port. */
export class Gateway {
  constructor(port, { bin = gatewayBin(), dbUrl = databaseUrl(), extraArgs = [] } = {}) {
    this.port = port;
    this.bin = bin;
    this.dbUrl = dbUrl;
    this.extraArgs = extraArgs;
    this.child = null;
    this.log = '';
    this.exitCodes = [];
  }

  get url() { return `http://127.0.0.1:${this.port}`; }

  async start({ timeout = 30_000 } = {}) {
    const args = ['--listen', `127.0.0.1:${this.port}`, '--database-url', this.dbUrl, ...this.extraArgs];
    const child = spawn(this.bin, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { RUST_LOG: 'info', ...process.env },
    });
    this.child = child;
    running.add(child);
    const append = (chunk) => {
      this.log += chunk.toString();
      if (this.log.length > 200_000) this.log = this.log.slice(-100_000);
    };
    child.stdout.on('data', append);
    child.stderr.on('data', append);
    child.exited = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        running.delete(child);
        resolve({ code, signal });
      });
      child.on('error', (err) => {
        running.delete(child);
        append(`spawn error: ${err.message}\n`);
        resolve({ code: null, signal: null, error: err });
      });
    });
    let exitedEarly = null;
    child.exited.then((r) => { exitedEarly = r; });
    await waitUntil(async () => {
      if (exitedEarly) throw new Error(`gateway exited during start-up (${JSON.stringify(exitedEarly)}):\n${this.tail()}`);
      try {
        const res = await fetch(`${this.url}/readyz`, { signal: AbortSignal.timeout(2000) });
        return res.status === 200;
      } catch {
        return false;
      }
    }, { timeout, interval: 100, message: `GET ${this.url}/readyz = 200` }).catch((err) => {
      if (exitedEarly) throw new Error(`gateway exited during start-up (${JSON.stringify(exitedEarly)}):\n${this.tail()}`);
      throw new Error(`${err.message}\n--- gateway log ---\n${this.tail()}`);
    });
    return this;
  }

  /** SIGTERM, then wait for the exit (SIGKILL after `timeout` ms). Returns {code, signal}. */
  async stop({ timeout = 15_000 } = {}) {
    const child = this.child;
    if (!child) return null;
    this.child = null;
    if (child.exitCode !== null || child.signalCode !== null) return child.exited;
    child.kill('SIGTERM');
    const result = await Promise.race([child.exited, sleep(timeout).then(() => null)]);
    if (result) {
      this.exitCodes.push(result);
      return result;
    }
    child.kill('SIGKILL');
    const killed = await child.exited;
    this.exitCodes.push({ ...killed, killedAfterTimeout: true });
    return { ...killed, killedAfterTimeout: true };
  }

  tail(n = 4000) { return this.log.slice(-n); }
}

export const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

export function launchBrowser() {
  return chromium.launch({ executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium', args: CHROMIUM_ARGS });
}

export async function connectDb() {
  const client = new pg.Client({ connectionString: databaseUrl() });
  await client.connect();
  return client;
}

/** The orders as the database has them (those passing `where`, if given), ordered by id. */
export async function dbOrders(db, where = 'true', args = []) {
  const { rows } = await db.query(`SELECT id, customer_name, product_name, status::text AS status, updated_at FROM orders WHERE ${where} ORDER BY id`, args);
  return rows.map((r) => ({ ...r, id: Number(r.id) }));
}

/** The orders a page shows (live rows only: a row fading out has lost its data-id). */
export function pageOrders(page) {
  return page.$$eval('#orders-body tr[data-id]', (trs) => trs.map((tr) => {
    const text = (col) => tr.querySelector(`[data-col="${col}"]`)?.textContent ?? null;
    const statusCell = tr.querySelector('[data-col="status"]');
    const select = statusCell?.querySelector('select');
    return {
      id: Number(tr.dataset.id),
      customer_name: text('customer_name'),
      product_name: text('product_name'),
      status: select ? select.value : statusCell?.textContent?.trim() ?? null,
      updated_at: tr.querySelector('[data-col="updated_at"] time')?.getAttribute('datetime') ?? text('updated_at'),
    };
  }));
}

function toMillis(value) {
  if (value instanceof Date) return value.getTime();
  if (typeof value !== 'string') return NaN;
  // Accept RFC 3339 and PostgreSQL's text form ("2026-01-01 10:00:00.123+00").
  let s = value.trim().replace(' ', 'T').replace(/([+-]\d\d)$/, '$1:00');
  s = s.replace(/\.(\d{3})\d+/, '.$1');
  return Date.parse(s);
}

/**
 * Compares a page's rows with the database's. Returns null when they agree, else a
 * human-readable difference (duplicates, missing or extra ids, differing fields).
 */
export function diffOrders(pageRows, dbRows) {
  const problems = [];
  const seen = new Map();
  for (const r of pageRows) seen.set(r.id, (seen.get(r.id) || 0) + 1);
  const dups = [...seen].filter(([, n]) => n > 1).map(([id]) => id);
  if (dups.length) problems.push(`duplicate rows for ids ${dups.join(', ')}`);
  const byId = new Map(pageRows.map((r) => [r.id, r]));
  const dbIds = new Set(dbRows.map((r) => r.id));
  const missing = dbRows.filter((r) => !byId.has(r.id)).map((r) => r.id);
  const extra = pageRows.filter((r) => !dbIds.has(r.id)).map((r) => r.id);
  if (missing.length) problems.push(`missing ids ${missing.join(', ')}`);
  if (extra.length) problems.push(`extra ids ${[...new Set(extra)].join(', ')}`);
  for (const d of dbRows) {
    const p = byId.get(d.id);
    if (!p) continue;
    for (const k of ['customer_name', 'product_name', 'status']) {
      if (p[k] !== d[k]) problems.push(`id ${d.id} ${k}: page ${JSON.stringify(p[k])} vs db ${JSON.stringify(d[k])}`);
    }
    const pm = toMillis(p.updated_at);
    const dm = toMillis(d.updated_at);
    if (!(Math.abs(pm - dm) <= 1)) problems.push(`id ${d.id} updated_at: page ${JSON.stringify(p.updated_at)} vs db ${d.updated_at?.toISOString?.() ?? d.updated_at}`);
  }
  return problems.length ? problems.join('; ') : null;
}

const UI_ASSETS = {
  '/': ['index.html', 'text/html; charset=utf-8'],
  '/index.html': ['index.html', 'text/html; charset=utf-8'],
  '/app.js': ['app.js', 'text/javascript; charset=utf-8'],
  '/client.js': ['client.js', 'text/javascript; charset=utf-8'],
  '/rowcast-client.js': ['../clients/js/index.js', 'text/javascript; charset=utf-8'],
  '/style.css': ['style.css', 'text/css; charset=utf-8'],
  '/favicon.svg': ['favicon.svg', 'image/svg+xml'],
};

/**
 * For UI development only (ROWCAST_UI_DIR=ui): the gateway embeds ui/ when it is
 * compiled, so to try the UI files of the working tree against an already built binary
 * this proxy serves them from disk and forwards everything else (REST, SSE, WebSocket
 * upgrades) to the gateway.
 */
export class UiProxy {
  constructor(dir, gatewayPort) {
    this.dir = dir;
    this.gatewayPort = gatewayPort;
    this.sockets = new Set();
  }

  get url() { return `http://127.0.0.1:${this.port}`; }

  async start() {
    const server = http.createServer((req, res) => {
      const asset = UI_ASSETS[new URL(req.url, 'http://x').pathname];
      if (asset && req.method === 'GET') {
        res.writeHead(200, { 'Content-Type': asset[1], 'Cache-Control': 'no-cache' });
        res.end(readFileSync(path.join(this.dir, asset[0])));
        return;
      }
      const upstream = http.request({
        host: '127.0.0.1', port: this.gatewayPort, method: req.method, path: req.url, headers: req.headers, agent: false,
      }, (up) => {
        res.writeHead(up.statusCode, up.rawHeaders);
        up.pipe(res);
        up.on('error', () => res.destroy());
      });
      upstream.on('error', () => { if (res.headersSent) res.destroy(); else { res.writeHead(502); res.end(); } });
      res.on('close', () => upstream.destroy());
      req.pipe(upstream);
    });
    server.on('upgrade', (req, socket, head) => {
      const up = net.connect(this.gatewayPort, '127.0.0.1', () => {
        let raw = `${req.method} ${req.url} HTTP/1.1\r\n`;
        for (let i = 0; i < req.rawHeaders.length; i += 2) raw += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
        up.write(`${raw}\r\n`);
        if (head.length) up.write(head);
        up.pipe(socket);
        socket.pipe(up);
      });
      const done = () => { up.destroy(); socket.destroy(); };
      up.on('error', done); socket.on('error', done); up.on('close', done); socket.on('close', done);
    });
    server.on('connection', (s) => { this.sockets.add(s); s.on('close', () => this.sockets.delete(s)); });
    this.server = server;
    await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
    this.port = server.address().port;
    return this;
  }

  async stop() {
    for (const s of this.sockets) s.destroy();
    await new Promise((resolve) => this.server?.close(resolve) ?? resolve());
  }
}

/** Where pages should point: the gateway, or a UiProxy in front of it (ROWCAST_UI_DIR). */
export async function pageBase(gw) {
  if (!process.env.ROWCAST_UI_DIR) return { url: gw.url, stop: async () => {} };
  const proxy = await new UiProxy(path.resolve(process.env.ROWCAST_UI_DIR), gw.port).start();
  return { url: proxy.url, stop: () => proxy.stop() };
}

/**
 * Opens the page at `url` in a fresh context and returns the time from navigation to
 * the first order row painted (the page's `rowcast:first-row` mark, performance.now
 * scale), the time to the whole view's snapshot applied (`rowcast:snapshot`), and the page.
 */
export async function firstRowTime(browser, url, { timeout = 30_000 } = {}) {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const page = await ctx.newPage();
  await page.goto(url);
  await page.waitForFunction(() => performance.getEntriesByName('rowcast:first-row').length > 0, null, { timeout });
  const ms = await page.evaluate(() => performance.getEntriesByName('rowcast:first-row')[0].startTime);
  await page.waitForFunction(() => performance.getEntriesByName('rowcast:snapshot').length > 0, null, { timeout });
  const snapshotMs = await page.evaluate(() => performance.getEntriesByName('rowcast:snapshot')[0].startTime);
  return { ms, snapshotMs, page, ctx };
}
