// The worker's capture order (Chromium's strategy) against a fake extension API and a fake host, without a browser:
// pause → verified add → cancel + erase on the host's ok; resume on a refusal or a missing host; after a lost reply,
// ask the host by key before resuming; settle what an earlier worker left paused; leave alone what should stay with
// the browser. The real browsers run the same code in capture.test.mjs.

import assert from "node:assert/strict";
import { beforeEach, test } from "node:test";

const calls = [];
const listeners = {};
/** How the fake host answers `add`: "ok", "refuse" (fetch_failed), "gone" (not installed), "silent", or "lost" (the
 * service saved it and died before replying: the relay answers `unavailable`, and `find` then knows the key). */
let hostMode = "ok";
let lastAdd = null;
/** client_key → download the fake host has. */
const known = new Map();
const connects = [];
const storage = new Map();
/** Download id → the name the fake Chromium chooses for it, reported through onChanged. */
const namesChosen = new Map();
/** What downloads.search answers for an id, when a test sets it. */
let searchResult = null;
/** The downloads the fake host lists (a failed one makes an offer), and how it answers `set_url`. */
let listed = [];
let setUrlAnswer = "ok";
/** Every request the fake host got other than add and find, in order. */
const sent = [];

const event = (name) => ({ addListener: (fn) => (listeners[name] ??= []).push(fn) });
const record = (name) => async (arg) => {
  calls.push([name, arg]);
};

function answer(msg) {
  if (msg.cmd === "find") {
    return { id: msg.id, ok: true, result: { download: known.get(msg.client_key) ?? null } };
  }
  if (msg.cmd === "list") return { id: msg.id, ok: true, result: { downloads: listed, total: listed.length } };
  if (msg.cmd !== "add") {
    sent.push(msg);
    if (msg.cmd === "set_url" && setUrlAnswer === "conflict" && !msg.restart) {
      return { id: msg.id, ok: false, error: { code: "conflict", message: "the new address serves another file" } };
    }
    return { id: msg.id, ok: true, result: {} };
  }
  lastAdd = msg;
  switch (hostMode) {
    case "refuse":
      return { id: msg.id, ok: false, error: { code: "fetch_failed", message: "the server answered 410 Gone" } };
    case "lost":
      known.set(msg.client_key, { id: 7, url: msg.url });
      return { id: msg.id, ok: false, error: { code: "unavailable", message: "the service went away" } };
    default:
      known.set(msg.client_key, { id: 1, url: msg.url });
      return { id: msg.id, ok: true, result: { id: 1 } };
  }
}

function fakePort() {
  const onMessage = [];
  const onDisconnect = [];
  const port = {
    onMessage: { addListener: (fn) => onMessage.push(fn) },
    onDisconnect: { addListener: (fn) => onDisconnect.push(fn) },
    postMessage(msg) {
      setTimeout(() => {
        if (hostMode === "gone") {
          globalThis.chrome.runtime.lastError = { message: "Specified native messaging host not found." };
          for (const fn of onDisconnect) fn(port);
          globalThis.chrome.runtime.lastError = undefined;
        } else if (hostMode !== "silent" || msg.cmd !== "add") {
          for (const fn of onMessage) fn(answer(msg));
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
    search: async ({ id }) => [searchResult?.(id) ?? { id, filename: namesChosen.get(id) ?? "" }],
    onCreated: event("onCreated"),
    onChanged: event("onChanged"),
  },
  storage: {
    local: {
      get: async (keys) => {
        if (keys === null) return Object.fromEntries(storage);
        const list = Array.isArray(keys) ? keys : [keys];
        return Object.fromEntries(list.filter((k) => storage.has(k)).map((k) => [k, storage.get(k)]));
      },
      set: async (obj) => {
        for (const [k, v] of Object.entries(obj)) storage.set(k, v);
      },
      remove: async (k) => {
        storage.delete(k);
      },
    },
  },
  cookies: {
    getAll: async ({ url }) =>
      url.includes("cookie")
        ? [
            { name: "jar", value: "1", sameSite: "lax" },
            { name: "strict", value: "2", sameSite: "strict" },
          ]
        : [],
  },
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

const { answerOffer, initCapture, settle, timing } = await import("../../extension/capture.js");
const host = await import("../../extension/host.js");
timing.findMs = 300;
timing.nameMs = 300;
timing.addMs = 500;
initCapture();

const item = (over = {}) => ({
  id: 1,
  url: "https://h.example/big.iso",
  state: "in_progress",
  totalBytes: 0,
  filename: "/tmp/big.iso",
  startTime: "2026-11-29T00:00:00.000Z",
  ...over,
});

/** Fire onCreated and wait for the capture to finish (the listener returns its promise). */
async function created(it) {
  await Promise.all(listeners.onCreated.map((fn) => fn(it)));
}

const names = () => calls.map(([n]) => n);
const pausedLeft = () => [...storage.keys()].filter((k) => k.startsWith("capture/"));

beforeEach(() => {
  calls.length = 0;
  hostMode = "ok";
  lastAdd = null;
  navigatorThrows = false;
  known.clear();
  listed = [];
  setUrlAnswer = "ok";
  sent.length = 0;
});

test("a verified add cancels and erases the browser's download, with the headers the browser sent", async () => {
  listeners.sendHeaders({
    url: "https://h.example/big.iso",
    method: "GET",
    requestHeaders: [
      { name: "Cookie", value: "session=abc" },
      { name: "User-Agent", value: "TestUA" },
      { name: "Referer", value: "https://h.example/page" },
      { name: "Authorization", value: "Basic dTpw" },
    ],
  });
  await created(item({ referrer: "https://h.example/page", totalBytes: 5_000_000, mime: "application/x-iso9660-image" }));
  assert.deepEqual(names(), ["pause", "cancel", "erase"]);
  assert.equal(lastAdd.url, "https://h.example/big.iso");
  assert.equal(lastAdd.filename, "big.iso");
  assert.equal(lastAdd.referrer, undefined, "the Referer travels in the headers only");
  assert.deepEqual(lastAdd.expect, { size: 5_000_000, mime: "application/x-iso9660-image" });
  assert.match(lastAdd.client_key, /^[0-9a-f-]{36}\/1\/\d+$/);
  assert.deepEqual(lastAdd.headers, {
    Cookie: "session=abc",
    Authorization: "Basic dTpw",
    "User-Agent": "TestUA",
    Referer: "https://h.example/page",
    "Accept-Encoding": "identity",
  });
  assert.deepEqual(pausedLeft(), [], "nothing is left recorded as paused");
});

test("a request the browser sent without a cookie gets none from the jar", async () => {
  listeners.sendHeaders({ url: "https://h.example/cookie-withheld.bin", method: "GET", requestHeaders: [] });
  await created(item({ id: 11, url: "https://h.example/cookie-withheld.bin" }));
  assert.equal(lastAdd.headers.Cookie, undefined);
});

test("unseen requests get the URL's cookies, without Strict ones from another site", async () => {
  await created(item({ id: 12, url: "https://h.example/cookie.bin", referrer: "https://other.example/" }));
  assert.equal(lastAdd.headers.Cookie, "jar=1");
  assert.equal(lastAdd.headers["User-Agent"], "FallbackUA");
  await created(item({ id: 13, url: "https://h.example/cookie.bin", referrer: "https://www.h.example/p" }));
  assert.equal(lastAdd.headers.Cookie, "jar=1; strict=2");
});

test("the name Chromium chooses after onCreated is waited for", async () => {
  namesChosen.set(14, "/dl/chosen name.bin");
  const it = item({ id: 14, filename: "" });
  const done = created(it);
  setTimeout(() => listeners.onChanged.forEach((fn) => fn({ id: 14, filename: { current: "/dl/chosen name.bin" } })), 20);
  await done;
  assert.equal(lastAdd.filename, "chosen name.bin");
});

test("an unexpected error after pausing still resumes the browser's download", async () => {
  navigatorThrows = true;
  await created(item({ id: 4, url: "https://h.example/other.bin" }));
  assert.deepEqual(names(), ["pause", "resume"]);
  assert.equal(lastAdd, null);
  assert.deepEqual(pausedLeft(), []);
});

test("a refused add (SDM cannot fetch the file) resumes the browser's download", async () => {
  hostMode = "refuse";
  await created(item({ id: 2 }));
  assert.deepEqual(names(), ["pause", "resume"]);
});

test("a lost reply: the host is asked by key, has the download, and the browser's copy goes (no double)", async () => {
  hostMode = "lost";
  await created(item({ id: 8 }));
  assert.deepEqual(names(), ["pause", "cancel", "erase"]);
  assert.ok(known.has(lastAdd.client_key));
});

test("a missing host resumes the browser's download at once", async () => {
  hostMode = "gone";
  const started = Date.now();
  await created(item({ id: 3 }));
  assert.deepEqual(names(), ["pause", "resume"]);
  assert.ok(Date.now() - started < timing.findMs, "no waiting for a host that is not installed");
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

test("a host that never answers: after the timeout it is asked by key, then the browser's download resumes", async () => {
  hostMode = "silent";
  const started = Date.now();
  await created(item({ id: 5 }));
  assert.deepEqual(names(), ["pause", "resume"]);
  assert.ok(Date.now() - started >= timing.addMs - 10, `resumed after ${Date.now() - started} ms`);
});

test("what an earlier worker left paused is settled: cancelled when the host has it, else resumed", async () => {
  const rec = (id, key) => ({ key, id, url: "https://h.example/big.iso", startTime: `t${id}`, paused: true, at: Date.now() });
  storage.set("capture/k-host-has", rec(21, "k-host-has"));
  storage.set("capture/k-host-lacks", rec(22, "k-host-lacks"));
  known.set("k-host-has", { id: 3 });
  searchResult = (id) => ({ id, url: "https://h.example/big.iso", startTime: `t${id}`, state: "interrupted" });
  await settle();
  searchResult = null;
  assert.deepEqual(calls, [
    ["cancel", 21],
    ["erase", { id: 21 }],
    ["resume", 22],
  ]);
  assert.deepEqual(pausedLeft(), []);
});

test("a download that cannot be paused is left alone", async () => {
  await created(item({ id: 99 }));
  assert.deepEqual(names(), ["pause"]);
  assert.equal(lastAdd, null);
});

test("small, private, blob:, data: and POST downloads are not touched", async () => {
  listeners.sendHeaders({ url: "https://h.example/form", method: "POST", requestHeaders: [] });
  for (const it of [
    item({ totalBytes: 1000 }),
    item({ incognito: true }),
    item({ url: "blob:https://h.example/x" }),
    item({ url: "data:text/plain,hi" }),
    item({ url: "https://h.example/form" }),
  ]) {
    await created(it);
  }
  assert.deepEqual(calls, []);
});

/** The offers standing in storage: `[key, record]`. */
const offersLeft = () => [...storage.entries()].filter(([k, v]) => k.startsWith("capture/") && v.offer);
const failedIso = { id: 40, status: "failed", filename: "big.iso", total: 5_000_000, url: "https://old.example/big.iso" };

test("the file of a failed download is offered, not handed over; Use it gives that download the address and headers", async () => {
  listed = [failedIso];
  listeners.sendHeaders({
    url: "https://h.example/offer.iso",
    method: "GET",
    requestHeaders: [{ name: "Cookie", value: "fresh=1" }],
  });
  const it = item({ id: 30, url: "https://h.example/offer.iso", totalBytes: 5_000_000 });
  searchResult = (id) => ({ ...it, id });
  await created(it);
  assert.deepEqual(names(), ["pause"], "the browser's copy waits, paused");
  assert.equal(lastAdd, null, "nothing handed over");
  const [[key, rec]] = offersLeft();
  assert.equal(rec.offer.failedId, 40);

  setUrlAnswer = "conflict";
  await assert.rejects(answerOffer(rec.key, "use"), (e) => e.code === "conflict");
  assert.equal(offersLeft().length, 1, "a refused answer keeps the offer");
  assert.deepEqual(names(), ["pause"]);
  await answerOffer(rec.key, "restart");
  searchResult = null;
  assert.deepEqual(
    sent.map(({ cmd, download_id, url, restart, headers }) => ({ cmd, download_id, url, restart, cookie: headers?.Cookie })),
    [
      { cmd: "set_url", download_id: 40, url: "https://h.example/offer.iso", restart: undefined, cookie: "fresh=1" },
      { cmd: "set_url", download_id: 40, url: "https://h.example/offer.iso", restart: true, cookie: "fresh=1" },
      { cmd: "resume", download_id: 40, url: undefined, restart: undefined, cookie: undefined },
    ],
  );
  assert.deepEqual(names(), ["pause", "cancel", "erase"]);
  assert.ok(!storage.has(key), "the answered offer is gone");
});

test("Download separately, another size, and an offer a stopped worker left: each is an ordinary capture", async () => {
  listed = [failedIso];
  const it = item({ id: 31, url: "https://h.example/separate.iso", totalBytes: 5_000_000 });
  searchResult = (id) => ({ ...it, id });
  await created(it);
  const [[, rec]] = offersLeft();
  await answerOffer(rec.key, "separate");
  assert.equal(lastAdd.url, "https://h.example/separate.iso");
  assert.deepEqual(names(), ["pause", "cancel", "erase"]);
  assert.deepEqual(offersLeft(), []);

  calls.length = 0;
  await created(item({ id: 32, url: "https://h.example/resized.iso", totalBytes: 4_000_000 }));
  assert.equal(lastAdd.url, "https://h.example/resized.iso", "another size is no offer");
  assert.deepEqual(names(), ["pause", "cancel", "erase"]);

  calls.length = 0;
  lastAdd = null;
  const left = { ...rec, key: "k-offer-left", id: 33, offer: { ...rec.offer, add: { ...rec.offer.add, client_key: "k-offer-left" } } };
  storage.set("capture/k-offer-left", left);
  searchResult = (id) => ({ ...it, id, url: left.url, startTime: left.startTime });
  await settle();
  searchResult = null;
  assert.equal(lastAdd?.client_key, "k-offer-left", "handed over with its own key");
  assert.deepEqual(names(), ["cancel", "erase"]);
  assert.deepEqual(offersLeft(), []);
});
