// The worker's one native port to SDM's host: requests matched to replies by id, events fanned out to listeners,
// reconnection with backoff. The host owns all download state; this file only carries frames.

import { api } from "./api.js";

export const HOST_NAME = "com.sdm.host";
export const REQUEST_TIMEOUT_MS = 10_000;
const BACKOFF_MS = [1_000, 2_000, 5_000, 10_000, 30_000, 60_000];

/** A failed request: `code` is the host's error code, or from here "not_installed" (the browser found no host to
 * start, so nothing was sent), "unavailable" (the host went away: a request may or may not have reached it) or
 * "timeout". */
export class HostError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

let port = null;
let nextId = 1;
/** id → { resolve, reject, timer } for requests on the current port. */
const pending = new Map();
const eventListeners = [];
const connectListeners = [];
let failures = 0;
let retryTimer = null;
/** Why the last port closed, for the popup's and the console's benefit. */
let lastError = null;

/** What a port's closing means for the requests on it: a host that was never found cannot have received them. */
const codeFor = (why) =>
  /not found|forbidden|no such native application/i.test(why ?? "") ? "not_installed" : "unavailable";

export const status = () => ({ connected: port !== null, lastError });
export const onEvent = (fn) => eventListeners.push(fn);
export const onConnect = (fn) => connectListeners.push(fn);

function call(fn, ...args) {
  try {
    const r = fn(...args);
    if (r && typeof r.catch === "function") r.catch((e) => console.warn("SDM listener failed:", e));
  } catch (e) {
    console.warn("SDM listener failed:", e);
  }
}

/** Open the port if it is not open. Returns it, or null when the browser refused at once. */
export function connect() {
  if (port) return port;
  clearTimeout(retryTimer);
  retryTimer = null;
  let p;
  try {
    p = api.runtime.connectNative(HOST_NAME);
  } catch (e) {
    lastError = String(e?.message ?? e);
    console.warn(`SDM: cannot start the native host: ${lastError}`);
    scheduleReconnect();
    return null;
  }
  port = p;
  p.onMessage.addListener((msg) => onMessage(msg));
  p.onDisconnect.addListener(() => {
    // Chrome says why in runtime.lastError (only readable here); Firefox in port.error.
    const why = api.runtime.lastError?.message ?? p.error?.message ?? "the host exited";
    lastError = why;
    console.warn(`SDM: native host disconnected: ${why} (if SDM is not installed, run \`sdm install\`)`);
    if (port === p) port = null;
    const failed = [...pending.values()];
    pending.clear();
    for (const entry of failed) {
      clearTimeout(entry.timer);
      entry.reject(new HostError(codeFor(why), why));
    }
    scheduleReconnect();
  });
  for (const fn of connectListeners) call(fn);
  return p;
}

function onMessage(msg) {
  failures = 0;
  lastError = null;
  if (msg && typeof msg.event === "string") {
    for (const fn of eventListeners) call(fn, msg);
    return;
  }
  const entry = pending.get(msg?.id);
  if (!entry) return;
  pending.delete(msg.id);
  clearTimeout(entry.timer);
  if (msg.ok) entry.resolve(msg.result ?? {});
  else entry.reject(new HostError(msg.error?.code ?? "internal", msg.error?.message ?? "the host refused"));
}

function scheduleReconnect() {
  if (retryTimer !== null) return;
  const delay = BACKOFF_MS[Math.min(failures, BACKOFF_MS.length - 1)];
  failures += 1;
  retryTimer = setTimeout(() => {
    retryTimer = null;
    connect();
  }, delay);
}

/** Send `{id, cmd, ...fields}` and wait for its reply's `result`; rejects with a HostError. */
export function request(cmd, fields = {}, timeoutMs = REQUEST_TIMEOUT_MS) {
  const p = port ?? connect();
  if (!p) return Promise.reject(new HostError(codeFor(lastError), lastError ?? "cannot start the native host"));
  const id = nextId++;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      pending.delete(id);
      reject(new HostError("timeout", `no answer to ${cmd} within ${timeoutMs / 1000} s`));
    }, timeoutMs);
    pending.set(id, { resolve, reject, timer });
    try {
      p.postMessage({ id, cmd, ...fields });
    } catch (e) {
      pending.delete(id);
      clearTimeout(timer);
      reject(new HostError("unavailable", String(e?.message ?? e)));
    }
  });
}
