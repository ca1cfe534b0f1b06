// Test support: a loopback file server, the SDM service and a client for its socket, the extension's packages, and
// Chromium with the extension loaded. Everything runs on 127.0.0.1 and in temporary folders; every wait has a
// deadline.

import { spawn, execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import zlib from "node:zlib";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(here, "../..");
export const SDM_BIN = process.env.SDM_BIN ?? path.join(ROOT, "target/release/sdm");
/** The unpacked build (`cargo xtask build`), loaded when no package is given. */
export const UNPACKED_DIR = process.env.SDM_EXTENSION_DIR ?? path.join(ROOT, "target/extension");
/** The store packages of `cargo xtask dist`, which `cargo xtask test` passes; unset when a developer runs a test
 * file by hand, which then loads the unpacked build. */
export const CHROME_ZIP = process.env.SDM_CHROME_ZIP;
export const FIREFOX_XPI = process.env.SDM_FIREFOX_XPI;
export const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
/** The development id, pinned by the `key` of extension/manifest.json; the store package has no `key`. */
export const DEV_EXTENSION_ID = "mamfelpfpaooapfmapiecgobfkfnmjnj";

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
export const sha256 = (buf) => createHash("sha256").update(buf).digest("hex");
export const sha256File = (file) => sha256(fs.readFileSync(file));

/** Poll `fn` until it returns a truthy value; fail with `what` (and the last value) after `timeoutMs`. */
export async function waitFor(what, fn, { timeoutMs = 30_000, intervalMs = 100 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}; last: ${describe(last)}`);
    }
    await sleep(intervalMs);
  }
}

function describe(v) {
  if (v instanceof Error) return v.message;
  try {
    return JSON.stringify(v)?.slice(0, 500);
  } catch {
    return String(v);
  }
}

/** Append a measurement line to the file `cargo xtask test` prints at the end, and to our own output. */
export function record(line) {
  console.log(`# ${line}`);
  if (process.env.SDM_RESULTS) fs.appendFileSync(process.env.SDM_RESULTS, `${line}\n`);
}

const tempDirs = [];
process.on("exit", () => {
  if (process.env.SDM_KEEP_TEMP) {
    if (tempDirs.length) console.log(`# kept (SDM_KEEP_TEMP): ${tempDirs.join(" ")}`);
    return;
  }
  for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true, maxRetries: 3 });
});

/** A fresh folder under the system's temporary folder, removed when the test process exits (kept if
 * `$SDM_KEEP_TEMP` is set, to look at a failure). */
export function tempDir(prefix) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `sdm-${prefix}-`));
  tempDirs.push(dir);
  return dir;
}

/** The files of the zip archive `file` (stored and deflated entries: what a browser's package holds), by name. */
export function readZip(file) {
  const zip = fs.readFileSync(file);
  const end = zip.lastIndexOf(Buffer.from([0x50, 0x4b, 0x05, 0x06]));
  if (end < 0) throw new Error(`${file} is not a zip archive`);
  const files = new Map();
  let at = zip.readUInt32LE(end + 16);
  for (let n = zip.readUInt16LE(end + 10); n > 0; n--) {
    if (zip.readUInt32LE(at) !== 0x02014b50) throw new Error(`${file}: bad central directory at ${at}`);
    const method = zip.readUInt16LE(at + 10);
    const size = zip.readUInt32LE(at + 20);
    const nameLen = zip.readUInt16LE(at + 28);
    const local = zip.readUInt32LE(at + 42);
    const name = zip.toString("utf8", at + 46, at + 46 + nameLen);
    at += 46 + nameLen + zip.readUInt16LE(at + 30) + zip.readUInt16LE(at + 32);
    if (name.endsWith("/")) continue;
    if (method !== 0 && method !== 8) throw new Error(`${file}: ${name} uses compression method ${method}`);
    const start = local + 30 + zip.readUInt16LE(local + 26) + zip.readUInt16LE(local + 28);
    const data = zip.subarray(start, start + size);
    files.set(name, method === 8 ? zlib.inflateRawSync(data) : data);
  }
  return files;
}

/** Extract the zip archive `file` into the folder `dir`. */
export function unzip(file, dir) {
  for (const [name, bytes] of readZip(file)) {
    const dest = path.resolve(dir, name);
    if (!dest.startsWith(path.resolve(dir) + path.sep)) throw new Error(`${file}: entry ${name} leaves the folder`);
    fs.mkdirSync(path.dirname(dest), { recursive: true });
    fs.writeFileSync(dest, bytes);
  }
}

/** The id Chromium gives an extension loaded unpacked from `dir` without a `key` in its manifest: the SHA-256 of the
 * folder's absolute path, its first 32 hex digits spelled with the letters a to p. */
export function unpackedExtensionId(dir) {
  const hex = createHash("sha256").update(path.resolve(dir)).digest("hex").slice(0, 32);
  return [...hex].map((d) => String.fromCharCode(97 + Number.parseInt(d, 16))).join("");
}

/** The folder Chromium loads the extension from: the store zip unpacked into a folder of this test process (its real
 * path, which is what Chromium hashes), or the unpacked build. */
export const EXTENSION_DIR = CHROME_ZIP
  ? (() => {
      const dir = fs.realpathSync(tempDir("chrome-zip"));
      unzip(CHROME_ZIP, dir);
      return dir;
    })()
  : UNPACKED_DIR;
/** The id Chromium gives it: derived from the folder for the store zip (no `key`), the pinned one otherwise. */
export const EXTENSION_ID = CHROME_ZIP ? unpackedExtensionId(EXTENSION_DIR) : DEV_EXTENSION_ID;
/** What Firefox installs (as a temporary add-on): the xpi, or the unpacked build. */
export const FIREFOX_EXTENSION = FIREFOX_XPI ?? UNPACKED_DIR;

/** Deterministic bytes for a name (xorshift32), so the expected sha256 is known without keeping files around. */
export function content(name, size) {
  const words = Math.ceil(size / 4);
  const buf = Buffer.alloc(words * 4);
  let x = 2166136261;
  for (const c of name) x = Math.imul(x ^ c.charCodeAt(0), 16777619) >>> 0;
  x = x || 1;
  for (let i = 0; i < words; i++) {
    x = (x ^ (x << 13)) >>> 0;
    x = (x ^ (x >>> 17)) >>> 0;
    x = (x ^ (x << 5)) >>> 0;
    buf.writeUInt32LE(x, i * 4);
  }
  return buf.subarray(0, size);
}

/**
 * A file server on 127.0.0.1 with ranges and per-connection throttling:
 *   /files/<name>?size=N&rate=BYTES_PER_SEC    deterministic bytes (rate: per response, optional)
 *   /page/<name>?size=N&rate=R                 HTML that sets a cookie and links to /protected/<name>
 *   /protected/<name>?size=N&rate=R            the file, only with that cookie (403 otherwise)
 *   /menu/<name>?size=N                        HTML with a plain link to /files/<name>
 * Every request is recorded in `requests` (path, headers).
 */
export async function startFileServer() {
  const requests = [];
  const token = `t${Math.random().toString(36).slice(2)}`;
  const sockets = new Set();
  const bodies = new Map();
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://x");
    requests.push({ method: req.method, path: url.pathname, headers: req.headers, at: Date.now() });
    const [, kind, name] = url.pathname.split("/");
    const size = Number(url.searchParams.get("size") ?? 1024 * 1024);
    const rate = Number(url.searchParams.get("rate") ?? 0);
    const query = url.search;
    if (kind === "page") {
      res.writeHead(200, {
        "Content-Type": "text/html",
        "Set-Cookie": `session=${token}; Path=/; SameSite=Lax`,
      });
      res.end(`<!doctype html><title>page</title><a id="dl" href="/protected/${name}${query}">download ${name}</a>`);
      return;
    }
    if (kind === "menu") {
      res.writeHead(200, { "Content-Type": "text/html" });
      res.end(`<!doctype html><title>menu</title><a id="dl" href="/files/${name}${query}">download ${name}</a>`);
      return;
    }
    if (kind === "protected" && !(req.headers.cookie ?? "").includes(`session=${token}`)) {
      res.writeHead(403, { "Content-Type": "text/plain" });
      res.end("no session cookie");
      return;
    }
    if (kind !== "files" && kind !== "protected") {
      res.writeHead(404);
      res.end();
      return;
    }
    const key = `${name}:${size}`;
    if (!bodies.has(key)) bodies.set(key, content(name, size));
    serveBytes(req, res, bodies.get(key), name, rate);
  });
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  const base = `http://127.0.0.1:${server.address().port}`;
  return {
    base,
    requests,
    token,
    url: (kind, name, size, rate) => `${base}/${kind}/${name}?size=${size}${rate ? `&rate=${rate}` : ""}`,
    close: () =>
      new Promise((r) => {
        for (const s of sockets) s.destroy();
        server.close(r);
      }),
  };
}

/**
 * The bytes a `Range` header asks of a body of `length` bytes: `null` for the whole body (no range, or one this
 * server does not serve), `{start, end}` (inclusive), or `"unsatisfiable"`.
 */
export function byteRange(header, length) {
  const range = /^bytes=(\d*)-(\d*)$/.exec(header ?? "");
  if (!range || (range[1] === "" && range[2] === "")) return null;
  let start;
  let end = length - 1;
  if (range[1] === "") {
    start = Math.max(0, length - Number(range[2]));
  } else {
    start = Number(range[1]);
    if (range[2] !== "") end = Math.min(end, Number(range[2]));
  }
  return start > end || start >= length ? "unsatisfiable" : { start, end };
}

/** Answer 416 for a range past the end of a body of `length` bytes. */
export function unsatisfiable(res, length) {
  res.writeHead(416, { "Content-Range": `bytes */${length}` });
  res.end();
}

function serveBytes(req, res, body, name, rate) {
  let start = 0;
  let end = body.length - 1;
  const headers = {
    "Content-Type": "application/octet-stream",
    "Content-Disposition": `attachment; filename="${name}"`,
    "Accept-Ranges": "bytes",
    ETag: `"${sha256(body).slice(0, 16)}"`,
    "Last-Modified": "Wed, 01 Jan 2025 00:00:00 GMT",
  };
  const range = byteRange(req.headers.range, body.length);
  let status = 200;
  if (range === "unsatisfiable") {
    unsatisfiable(res, body.length);
    return;
  }
  if (range) {
    ({ start, end } = range);
    status = 206;
    headers["Content-Range"] = `bytes ${start}-${end}/${body.length}`;
  }
  headers["Content-Length"] = String(end - start + 1);
  res.writeHead(status, headers);
  if (req.method === "HEAD") {
    res.end();
    return;
  }
  sendPaced(res, body.subarray(start, end + 1), rate);
}

/** Send `slice` as the response body: at once, or (with `rate` bytes per second) in 16 KiB chunks paced to that
 * rate, stopping if the client goes away. */
export function sendPaced(res, slice, rate) {
  if (!rate) {
    res.end(slice);
    return;
  }
  const chunk = 16 * 1024;
  let off = 0;
  let closed = false;
  res.on("close", () => {
    closed = true;
  });
  const t0 = Date.now();
  const pump = () => {
    if (closed) return;
    if (off >= slice.length) {
      res.end();
      return;
    }
    const next = slice.subarray(off, off + chunk);
    off += next.length;
    res.write(next);
    const due = t0 + (off / rate) * 1000;
    setTimeout(pump, Math.max(0, due - Date.now()));
  };
  pump();
}

/** A client for the service's Unix socket: 4-byte native-endian length, then JSON. */
export class ServiceClient {
  static async connect(home) {
    const sock = path.join(home, "sdm.sock");
    const socket = await new Promise((resolve, reject) => {
      const s = net.createConnection(sock, () => resolve(s));
      s.once("error", reject);
    });
    return new ServiceClient(socket);
  }

  constructor(socket) {
    this.socket = socket;
    this.nextId = 1;
    this.pending = new Map();
    this.events = [];
    this.buf = Buffer.alloc(0);
    socket.on("data", (d) => this.onData(d));
    socket.on("close", () => {
      for (const { reject } of this.pending.values()) reject(new Error("service connection closed"));
      this.pending.clear();
    });
  }

  onData(d) {
    this.buf = Buffer.concat([this.buf, d]);
    while (this.buf.length >= 4) {
      const len = os.endianness() === "LE" ? this.buf.readUInt32LE(0) : this.buf.readUInt32BE(0);
      if (this.buf.length < 4 + len) break;
      const msg = JSON.parse(this.buf.subarray(4, 4 + len).toString("utf8"));
      this.buf = this.buf.subarray(4 + len);
      if (typeof msg.event === "string") {
        this.events.push(msg);
        continue;
      }
      const p = this.pending.get(msg.id);
      if (!p) continue;
      this.pending.delete(msg.id);
      if (msg.ok) p.resolve(msg.result ?? {});
      else p.reject(new Error(`${cmdName(p)}: ${msg.error?.code}: ${msg.error?.message}`));
    }
  }

  request(cmd, fields = {}) {
    const id = this.nextId++;
    const body = Buffer.from(JSON.stringify({ id, cmd, ...fields }));
    const head = Buffer.alloc(4);
    if (os.endianness() === "LE") head.writeUInt32LE(body.length);
    else head.writeUInt32BE(body.length);
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, cmd });
      this.socket.write(Buffer.concat([head, body]));
    });
  }

  /** Every download, all pages. */
  async list() {
    const all = [];
    for (let offset = 0; ; ) {
      const page = await this.request("list", { offset, limit: 1000 });
      all.push(...page.downloads);
      offset += page.downloads.length;
      if (page.downloads.length === 0 || offset >= page.total) return all;
    }
  }

  /** Wait until some download satisfies `pred`; returns it. */
  waitForDownload(what, pred, opts) {
    return waitFor(what, async () => (await this.list()).find(pred), opts);
  }

  close() {
    this.socket.destroy();
  }
}

const cmdName = (p) => p.cmd;

/** `sdm serve` with its own data directory (and `env` added to its environment); stopped (by its pid) in `stop()`. */
export async function startService(home, env = {}) {
  const log = fs.openSync(path.join(home, "test-serve.log"), "a");
  const child = spawn(SDM_BIN, ["serve"], {
    env: { ...process.env, SDM_HOME: home, RUST_LOG: process.env.RUST_LOG ?? "info", ...env },
    stdio: ["ignore", log, log],
  });
  const exited = new Promise((r) => child.once("exit", r));
  const client = await waitFor("the sdm service to answer", async () => {
    if (child.exitCode !== null) throw new Error(`sdm serve exited with ${child.exitCode}: ${serviceLog(home)}`);
    const c = await ServiceClient.connect(home);
    await c.request("ping");
    return c;
  }, { timeoutMs: 15_000 });
  return {
    child,
    client,
    async stop() {
      client.close();
      if (child.exitCode === null) {
        child.kill("SIGTERM");
        const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
        await exited;
        clearTimeout(timer);
      }
    },
  };
}

export function serviceLog(home) {
  for (const f of ["test-serve.log", "service.log"]) {
    const p = path.join(home, f);
    if (fs.existsSync(p)) return fs.readFileSync(p, "utf8").slice(-2000);
  }
  return "(no log)";
}

/** Register the host for a Chromium profile folder (what `sdm install --dir` is for), allowing the id the store
 * package gets from its folder when that is what is loaded. */
export function registerHost(userDataDir) {
  const extra = EXTENSION_ID === DEV_EXTENSION_ID ? [] : ["--extension-id", EXTENSION_ID];
  execFileSync(SDM_BIN, ["install", "--dir", path.join(userDataDir, "NativeMessagingHosts"), ...extra], {
    env: { ...process.env, SDM_HOME: path.join(userDataDir, "unused-home") },
    stdio: "pipe",
  });
}

/** Playwright's options for headless Chromium with the extension (loaded unpacked from EXTENSION_DIR), with
 * `SDM_HOME` (and `env`) in its environment so the host it starts talks to the test's service. */
export function chromiumOptions({ home, env = {}, args = [] }) {
  return {
    executablePath: CHROMIUM,
    headless: false,
    // Playwright's defaults disable extensions; the extension is the point here.
    ignoreDefaultArgs: ["--disable-extensions", "--disable-component-extensions-with-background-pages"],
    args: [
      "--headless=new",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
      `--disable-extensions-except=${EXTENSION_DIR}`,
      `--load-extension=${EXTENSION_DIR}`,
      ...args,
    ],
    env: { ...process.env, SDM_HOME: home, ...env },
    timeout: 30_000,
  };
}

/**
 * Chromium with the extension, in a fresh profile. SDM_HOME is in its environment, so the host it starts
 * talks to the right service. Returns the context, the extension's service worker and its id.
 */
export async function launchBrowser({ userDataDir, home }) {
  const context = await chromium.launchPersistentContext(userDataDir, {
    ...chromiumOptions({ home }),
    viewport: { width: 480, height: 640 },
  });
  const worker =
    context.serviceWorkers().find((w) => w.url().startsWith("chrome-extension://")) ??
    (await context.waitForEvent("serviceworker", { timeout: 15_000 }));
  const id = new URL(worker.url()).host;
  return { context, worker, id };
}

/** Open the popup as a tab (same page, same code as the toolbar popup). */
export async function openPopup(context, id) {
  const page = await context.newPage();
  await page.goto(`chrome-extension://${id}/popup.html`);
  return page;
}

/**
 * What the popup and end-to-end suites start from: the file server, a service with its own SDM_HOME saving into a
 * fresh download folder, and Chromium with the extension on a fresh profile with the host registered. Returns
 * `{files, home, downloads, profile, svc, client, browser, close()}`; `close` stops all of it, and a start that fails
 * half-way stops what it had started.
 */
export async function startStack() {
  const s = { home: tempDir("home"), downloads: tempDir("downloads"), profile: tempDir("profile") };
  s.close = async () => {
    await s.browser?.context.close().catch(() => {});
    await s.svc?.stop();
    await s.files?.close();
    await stopServicesOf(s.home);
  };
  try {
    s.files = await startFileServer();
    registerHost(s.profile);
    s.svc = await startService(s.home);
    s.client = s.svc.client;
    await s.client.request("set_settings", { settings: { download_dir: s.downloads } });
    s.browser = await launchBrowser({ userDataDir: s.profile, home: s.home });
    return s;
  } catch (e) {
    await s.close().catch(() => {});
    throw e;
  }
}

/** Stop the processes whose environment names `home` as SDM_HOME (a service the relay started detached), and
 * wait until they are gone, so nothing writes into `home` after the test. */
export async function stopServicesOf(home) {
  const services = () =>
    fs
      .readdirSync("/proc")
      .filter((p) => /^\d+$/.test(p))
      .filter((pid) => {
        try {
          const env = fs.readFileSync(`/proc/${pid}/environ`, "utf8").split("\0");
          const cmd = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
          return env.includes(`SDM_HOME=${home}`) && cmd.includes("serve");
        } catch {
          return false; // Gone already, or not ours to read.
        }
      });
  for (const pid of services()) {
    try {
      process.kill(Number(pid), "SIGTERM");
    } catch {
      // Exited in between.
    }
  }
  await waitFor(`the services of ${home} to exit`, () => services().length === 0, { timeoutMs: 10_000 });
}
