// Taking over the browser's own downloads without ever losing or doubling one.
//
// The browser's copy is cancelled and erased only after the host has *verified* the download: its `add` carries an
// `expect` (the size and type the browser got), and the host answers only once its own first response matched and
// the download is saved. Any failure leaves the browser's copy to finish. Every capture carries a `client_key`; when
// the answer is lost (`unavailable`, timeout), the host is asked by key before the browser's copy is resumed.
//
// Chromium: pause the browser's download, wait for the name it chose, hand it over, then cancel + erase (or resume).
// What is paused is recorded in extension storage and settled at worker start and on each host connect, so a worker
// or browser that died mid-capture leaves nothing paused for ever.
// Firefox: `downloads.pause` cancels the request there and `resume` needs partial data, so the browser's download
// keeps running while SDM verifies; once SDM has it, the browser's copy is cancelled and its file removed (or, when
// the browser finished first, SDM drops its own).

import { api } from "./api.js";
import { HostError, onConnect, request } from "./host.js";
import {
  addHeaders,
  basename,
  captureKey,
  captureSettings,
  DEFAULT_CAPTURE,
  expectation,
  HeaderMemory,
  knownSize,
  reasonToLeave,
  referrerFor,
  sendableCookies,
} from "./policy.js";

const SETTINGS_KEY = "captureSettings";
const INSTANCE_KEY = "instance";
const PAUSED_PREFIX = "paused/";
/** How long each step may take. Exported so the unit tests can shorten them. */
export const timing = {
  /** The host verifies within 20 s; this leaves room for the relay, the state write and a cold service. */
  addMs: 45_000,
  /** How long to keep asking a host that is coming back whether it has a capture. */
  findMs: 20_000,
  /** How long Chromium may take to choose a name, and Firefox to learn a size. */
  nameMs: 5_000,
  sizeMs: 2_000,
};

const isFirefox = typeof api.runtime.getBrowserInfo === "function";
const memory = new HeaderMemory();
let settings = { ...DEFAULT_CAPTURE };
let instance = null;
/** Keys of the captures this worker is handing over right now; settling skips them. */
const inFlight = new Set();
/** Download id → resolvers waiting for Chromium to choose that download's file name. */
const nameWaiters = new Map();

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// A cold worker may see a download before the host answers; the last known settings are kept in storage for that.
const loaded = api.storage.local
  .get([SETTINGS_KEY, INSTANCE_KEY])
  .then(async (stored) => {
    if (stored?.[SETTINGS_KEY]) settings = captureSettings(stored[SETTINGS_KEY]);
    instance = stored?.[INSTANCE_KEY];
    if (!instance) {
      instance = crypto.randomUUID();
      await api.storage.local.set({ [INSTANCE_KEY]: instance });
    }
  })
  .catch((e) => {
    instance ??= crypto.randomUUID();
    console.warn("SDM: cannot read extension storage:", e);
  });

/** The host's settings (from get_settings or a settings event). */
export function setCaptureSettings(hostSettings) {
  settings = captureSettings(hostSettings);
  api.storage.local.set({ [SETTINGS_KEY]: settings }).catch(() => {});
}

/**
 * Headers to send with a download of `url`: exactly what the browser sent for it when that request was seen, else
 * the URL's cookies from `storeId` (the download's or tab's cookie store) that the browser would send coming from
 * `referrer`, and our user agent.
 */
export async function headersFor(url, referrer, storeId) {
  const seen = memory.recall(url);
  let cookies = [];
  if (!seen) {
    try {
      const query = { url };
      if (storeId) query.storeId = storeId;
      cookies = sendableCookies(await api.cookies.getAll(query), url, referrer);
    } catch (e) {
      console.warn("SDM: cannot read cookies:", e);
    }
  }
  return addHeaders({ seen, cookies, userAgent: navigator.userAgent, referrer });
}

function rememberRequest(details) {
  // Private tabs' requests are never kept (their downloads stay with the browser anyway).
  if (details.incognito) return;
  memory.remember(details.url, details.method, details.requestHeaders);
}

// --- the record of what Chromium's capture paused ---------------------------------------------------------------

// One storage key per paused download, so concurrent captures never overwrite each other's record.
const pausedKey = (id) => `${PAUSED_PREFIX}${id}`;

/** Download id → its capture key, for every download a capture paused and has not settled. */
async function pausedRecord() {
  try {
    const all = (await api.storage.local.get(null)) ?? {};
    return Object.fromEntries(
      Object.entries(all)
        .filter(([k]) => k.startsWith(PAUSED_PREFIX))
        .map(([k, v]) => [k.slice(PAUSED_PREFIX.length), v.key]),
    );
  } catch {
    return {};
  }
}

const notePaused = (id, key) => api.storage.local.set({ [pausedKey(id)]: { key, at: Date.now() } });
const forgetPaused = (id) => api.storage.local.remove(pausedKey(id)).catch(() => {});

// --- talking to the host ----------------------------------------------------------------------------------------

const transient = (e) => e instanceof HostError && (e.code === "unavailable" || e.code === "timeout");

/** The host's download for `key`, `null` when it has none; retries while the host is coming back, and throws when
 * it cannot be asked at all. */
async function findByKey(key) {
  const deadline = Date.now() + timing.findMs;
  for (;;) {
    try {
      return (await request("find", { client_key: key })).download ?? null;
    } catch (e) {
      if (!transient(e) || Date.now() > deadline) throw e;
      await sleep(1_000);
    }
  }
}

/** Hand a download over. Resolves to the host's download id when SDM has it, `null` when it does not (the host
 * refused, or cannot be reached). Never leaves the answer unknown: a lost reply is followed by a `find`. */
async function handOver(add) {
  try {
    return (await request("add", add, timing.addMs)).id;
  } catch (e) {
    if (!transient(e)) {
      console.info(`SDM: the host did not take ${add.url}: ${e.message}; the browser keeps it`);
      return null;
    }
    try {
      const found = await findByKey(add.client_key);
      return found ? found.id : null;
    } catch (err) {
      console.warn(`SDM: the host cannot be reached (${err.message}); the browser keeps the download`);
      return null;
    }
  }
}

async function buildAdd(item, url, key) {
  // The Referer goes in the headers: the one the browser sent, else what its default policy would send.
  const add = {
    url,
    headers: await headersFor(url, referrerFor(item.referrer, url), item.cookieStoreId),
    client_key: key,
    expect: expectation(item),
  };
  const name = basename(item.filename);
  if (name) add.filename = name;
  return add;
}

// --- the browser's side ----------------------------------------------------------------------------------------

async function dropBrowserCopy(id) {
  await api.downloads.cancel(id).catch(() => {});
  if (isFirefox) await api.downloads.removeFile(id).catch(() => {});
  await api.downloads.erase({ id }).catch(() => {});
}

async function current(id) {
  try {
    return (await api.downloads.search({ id }))[0] ?? null;
  } catch {
    return null;
  }
}

/** The name Chromium chose for a download (from the `download` attribute, Content-Disposition or the URL), which it
 * decides after `onCreated`. Empty when it has not chosen one in time; the host then names the file. */
async function chosenName(item) {
  if (item.filename) return item.filename;
  const named = new Promise((resolve) => {
    const list = nameWaiters.get(item.id) ?? [];
    list.push(resolve);
    nameWaiters.set(item.id, list);
  });
  // The name may have been chosen between onCreated and the listener above.
  const now = await current(item.id);
  if (now?.filename) return now.filename;
  const timeout = sleep(timing.nameMs).then(() => "");
  const name = await Promise.race([named, timeout]);
  nameWaiters.delete(item.id);
  return name || (await current(item.id))?.filename || "";
}

function onChanged(delta) {
  const name = delta.filename?.current;
  if (!name) return;
  for (const resolve of nameWaiters.get(delta.id) ?? []) resolve(name);
  nameWaiters.delete(delta.id);
}

/** Firefox reports the size after the first bytes arrive: wait a little for it, or for the download to end. */
async function withSize(item) {
  const deadline = Date.now() + timing.sizeMs;
  let it = item;
  while (knownSize(it) === 0 && it.state === "in_progress" && Date.now() < deadline) {
    await sleep(100);
    it = (await current(item.id)) ?? it;
  }
  return it;
}

async function captureChromium(item, url, key) {
  try {
    await api.downloads.pause(item.id);
  } catch (e) {
    // Already finished or failed: nothing to take over.
    console.info(`SDM: cannot pause download ${item.id}, leaving it: ${e?.message ?? e}`);
    return;
  }
  // From here on the browser's download is paused: any failure at all must resume it.
  let taken = null;
  try {
    await notePaused(item.id, key);
    const filename = await chosenName(item);
    taken = await handOver(await buildAdd({ ...item, filename }, url, key));
  } catch (e) {
    console.warn(`SDM: could not hand download ${item.id} over (${e.message}); the browser continues it`);
  }
  if (taken !== null) await dropBrowserCopy(item.id);
  else await api.downloads.resume(item.id).catch((err) => console.warn("SDM: resume failed:", err));
  await forgetPaused(item.id);
}

async function captureFirefox(item, url, key) {
  const sized = await withSize(item);
  const reason = reasonToLeave(sized, settings, memory.recall(url));
  if (reason) {
    console.info(`SDM: leaving download ${item.id} to the browser: ${reason}`);
    return;
  }
  const taken = await handOver(await buildAdd(sized, url, key));
  if (taken === null) return;
  const now = await current(item.id);
  if (now?.state === "complete") {
    // The browser was faster: keep its copy, drop SDM's (unless another capture's download was joined).
    console.info(`SDM: the browser finished ${url} first; SDM drops its copy`);
    await request("remove", { download_id: taken, delete_file: true }).catch(() => {});
    return;
  }
  await dropBrowserCopy(item.id);
}

async function onCreated(item) {
  await loaded;
  const url = item.finalUrl || item.url;
  const reason = reasonToLeave(item, settings, memory.recall(url));
  if (reason) {
    console.info(`SDM: leaving download ${item.id} to the browser: ${reason}`);
    return;
  }
  const key = captureKey(instance, item);
  inFlight.add(key);
  try {
    await (isFirefox ? captureFirefox(item, url, key) : captureChromium(item, url, key));
  } finally {
    inFlight.delete(key);
  }
}

/**
 * Settle what an earlier worker paused and could not finish handing over (it was stopped, or the browser closed):
 * the host has it → the browser's copy goes; otherwise the browser's copy is resumed.
 */
export function settlePaused() {
  // One pass at a time: a reconnect during a pass queues another pass behind it.
  settling = settling.then(settleOnce, settleOnce);
  return settling;
}

let settling = Promise.resolve();

async function settleOnce() {
  await loaded;
  const paused = await pausedRecord();
  for (const [id, key] of Object.entries(paused)) {
    if (inFlight.has(key)) continue;
    let found = null;
    try {
      found = await findByKey(key);
    } catch (e) {
      console.warn(`SDM: cannot ask the host about paused download ${id} (${e.message}); the browser continues it`);
    }
    const numeric = Number(id);
    if (found) await dropBrowserCopy(numeric);
    else await api.downloads.resume(numeric).catch(() => {});
    await forgetPaused(numeric);
  }
}

/** Register the listeners; call at the worker's top level so a waking worker sees the event that woke it. */
export function initCapture() {
  const filter = { urls: ["<all_urls>"] };
  try {
    // extraHeaders makes Chrome show Cookie and Referer; Firefox does not know it and shows them anyway.
    api.webRequest.onBeforeSendHeaders.addListener(rememberRequest, filter, ["requestHeaders", "extraHeaders"]);
  } catch {
    api.webRequest.onBeforeSendHeaders.addListener(rememberRequest, filter, ["requestHeaders"]);
  }
  api.downloads.onChanged?.addListener(onChanged);
  // The browser ignores the returned promise; the unit tests await it.
  api.downloads.onCreated.addListener((item) =>
    onCreated(item).catch((e) => console.warn("SDM: capture failed:", e)),
  );
  if (!isFirefox) {
    onConnect(() => settlePaused().catch((e) => console.warn("SDM: settling paused downloads failed:", e)));
  }
}
