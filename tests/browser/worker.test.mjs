// The worker's capture order against a fake extension API and a fake host, without a browser: pause → add → cancel +
// erase on the host's ok; resume on an error reply or a missing host; leave alone what should stay with the browser.

import assert from "node:assert/strict";
import { beforeEach, test } from "node:test";

const calls = [];
const listeners = {};
/** How the fake host answers a request frame: "ok", "error", "gone" (not installed) or "silent". */
let hostMode = "ok";
let lastAdd = null;
const connects = [];

const event = (name) => ({ addListener: (fn) => (listeners[name] ??= []).push(fn) });
const record = (name) => async (arg) => {
  calls.push([name, arg]);
};

function fakePort() {
  const onMessage = [];
  const onDisconnect = [];
  const port = {
    onMessage: { addListener: (fn) => onMessage.push(fn) },
    onDisconnect: { addListener: (fn) => onDisconnect.push(fn) },
    postMessage(msg) {
      setTimeout(() => {
        if (msg.cmd === "add") lastAdd = msg;
        if (hostMode === "gone") {
          globalThis.chrome.runtime.lastError = { message: "Specified native messaging host not found." };
          for (const fn of onDisconnect) fn(port);
          globalThis.chrome.runtime.lastError = undefined;
        } else if (hostMode === "error") {
          for (const fn of onMessage) fn({ id: msg.id, ok: false, error: { code: "invalid_argument", message: "no" } });
        } else if (hostMode === "ok") {
          for (const fn of onMessage) fn({ id: msg.id, ok: true, result: msg.cmd === "add" ? { id: 1 } : {} });
        }
      }, 1);
    },
    disconnect() {},
  };
  return port;
}

globalThis.chrome = {
  runtime: {
    lastError: undefined,
    connectNative: (name) => {
      connects.push(name);
      return fakePort();
    },
    getURL: (p) => p,
  },
  downloads: {
    pause: async (id) => {
      calls.push(["pause", id]);
      if (id === 99) throw new Error("Download must be in progress");
    },
    resume: record("resume"),
    cancel: record("cancel"),
    erase: record("erase"),
    onCreated: event("onCreated"),
  },
  storage: { local: { get: async () => ({}), set: async () => {} } },
  cookies: { getAll: async ({ url }) => (url.includes("cookie") ? [{ name: "jar", value: "1" }] : []) },
  webRequest: {
    onBeforeSendHeaders: {
      addListener: (fn, _filter, spec) => {
        assert.ok(spec.includes("requestHeaders"));
        listeners.sendHeaders = fn;
      },
    },
  },
};

// Node 20 has no navigator; the worker reads navigator.userAgent. A flag makes it throw, to test the unexpected.
let navigatorThrows = false;
Object.defineProperty(globalThis, "navigator", {
  configurable: true,
  get() {
    if (navigatorThrows) throw new Error("unexpected");
    return { userAgent: "FallbackUA" };
  },
});

const { initCapture } = await import("../../extension/capture.js");
const host = await import("../../extension/host.js");
initCapture();

const item = (over = {}) => ({ id: 1, url: "https://h.example/big.iso", state: "in_progress", totalBytes: 0, ...over });

/** Fire onCreated and wait for the capture to finish (the listener returns its promise). */
async function created(it) {
  await Promise.all(listeners.onCreated.map((fn) => fn(it)));
}

const names = () => calls.map(([n]) => n);

beforeEach(() => {
  calls.length = 0;
  hostMode = "ok";
  lastAdd = null;
  navigatorThrows = false;
});

test("an acknowledged add cancels and erases the browser's download, with the headers the browser sent", async () => {
  listeners.sendHeaders({
    url: "https://h.example/big.iso",
    method: "GET",
    requestHeaders: [
      { name: "Cookie", value: "session=abc" },
      { name: "User-Agent", value: "TestUA" },
      { name: "Referer", value: "https://h.example/page" },
    ],
  });
  await created(item({ referrer: "https://h.example/page", filename: "/tmp/big.iso" }));
  assert.deepEqual(names(), ["pause", "cancel", "erase"]);
  assert.equal(lastAdd.url, "https://h.example/big.iso");
  assert.equal(lastAdd.filename, "big.iso");
  assert.equal(lastAdd.referrer, "https://h.example/page");
  assert.deepEqual(lastAdd.headers, {
    Cookie: "session=abc",
    "User-Agent": "TestUA",
    Referer: "https://h.example/page",
    "Accept-Encoding": "identity",
  });
});

test("without seen headers, the URL's own cookies and the browser's user agent are sent", async () => {
  await created(item({ url: "https://h.example/cookie.bin" }));
  assert.equal(lastAdd.headers.Cookie, "jar=1");
  assert.equal(lastAdd.headers["User-Agent"], "FallbackUA");
});

test("an unexpected error after pausing still resumes the browser's download", async () => {
  navigatorThrows = true;
  await created(item({ id: 4, url: "https://h.example/other.bin" }));
  assert.deepEqual(names(), ["pause", "resume"]);
  assert.equal(lastAdd, null);
});

test("an error reply resumes the browser's download", async () => {
  hostMode = "error";
  await created(item({ id: 2 }));
  assert.deepEqual(names(), ["pause", "resume"]);
});

test("a missing host resumes the browser's download", async () => {
  hostMode = "gone";
  await created(item({ id: 3 }));
  assert.deepEqual(names(), ["pause", "resume"]);
});

test("after the host goes away the port is reopened with backoff, and reports why it closed", async () => {
  hostMode = "gone";
  await created(item({ id: 6 }));
  assert.equal(host.status().connected, false);
  assert.match(host.status().lastError, /not found/);
  const before = connects.length;
  hostMode = "ok";
  const deadline = Date.now() + 5_000;
  while (connects.length === before && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  assert.ok(connects.length > before, "reconnected within 5 s");
  assert.deepEqual(connects.slice(-1), ["com.sdm.host"]);
  assert.equal(host.status().connected, true);
});

test("a host that never answers: the browser's download is resumed after the 10 s timeout", { timeout: 20_000 }, async () => {
  hostMode = "silent";
  const started = Date.now();
  await created(item({ id: 5 }));
  assert.deepEqual(names(), ["pause", "resume"]);
  assert.ok(Date.now() - started >= 9_900, `resumed after ${Date.now() - started} ms`);
});

test("a download that cannot be paused is left alone", async () => {
  await created(item({ id: 99 }));
  assert.deepEqual(names(), ["pause"]);
  assert.equal(lastAdd, null);
});

test("small, blob:, data: and POST downloads are not touched", async () => {
  listeners.sendHeaders({ url: "https://h.example/form", method: "POST", requestHeaders: [] });
  for (const it of [
    item({ totalBytes: 1000 }),
    item({ url: "blob:https://h.example/x" }),
    item({ url: "data:text/plain,hi" }),
    item({ url: "https://h.example/form" }),
  ]) {
    await created(it);
  }
  assert.deepEqual(calls, []);
});
