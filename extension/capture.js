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
//
// A download of the file a failed SDM download was fetching (the same name and size) is not handed over at once: it
// becomes an *offer*, saved in its capture record, which the popup shows on the failed row. "Use it" gives the failed
// download this address and these headers (`set_url`), resumes it, and drops the browser's copy; "Download
// separately" hands it over as any capture. An offer nobody answers within RECORD_MAX_AGE_MS, or one left by a
// worker that stopped, is handed over as any capture, so the download is never lost.

import { api } from "./api.js";
import { notify } from "./badge.js";
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
const CAPTURE_PREFIX = "capture/";
/** A record whose download the browser has not listed again by then is dropped. */
const RECORD_MAX_AGE_MS = 10 * 60_000;
/** Downloads per `list` page when looking for a failed download. */
const LIST_PAGE = 1000;
/** How soon a settling pass that could not find a recorded download looks again. */
const SETTLE_AGAIN_MS = 2_000;
/** How long each step may take. Exported so the unit tests can shorten them. */
export const timing = {
  /** The host verifies within 20 s; this leaves room for the relay, the state write and a cold service. */
  addMs: 45_000,
  /** How long to keep asking a host that is coming back whether it has a capture. */
  findMs: 20_000,
  /** How long Chromium may take to choose a name, and Firefox to learn a size. */
  nameMs: 5_000,
  sizeMs: 2_000,
  /** How long Firefox's capture waits to see the download's request. */
  seenMs: 500,
};

const isFirefox = typeof api.runtime.getBrowserInfo === "function";
const memory = new HeaderMemory();
let settings = { ...DEFAULT_CAPTURE };
let instance = null;
/** Keys of the captures this worker is handing over right now; settling skips them. */
const inFlight = new Set();
/** Capture key → the offer this worker holds: `{rec, expiry, busy}`. */
const offers = new Map();
/** URL → the last capture of it under way, so captures of one URL take turns. */
const byUrl = new Map();
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

// --- the record of captures under way ------------------------------------------------------------------------
// Written before the hand-over starts and removed once the browser's side is settled, so a worker or browser that
// stops in between leaves a trace: at the next start, `settle` asks the host and finishes the job. One storage key
// per capture, so concurrent captures never overwrite each other's record. Firefox gives downloads new ids in each
// session, so a record also names the download by its URL and start time.

const recordKey = (key) => `${CAPTURE_PREFIX}${key}`;

/** Every capture record: `{key, id, url, startTime, paused, at}`. */
async function captureRecords() {
  try {
    const all = (await api.storage.local.get(null)) ?? {};
    return Object.entries(all)
      .filter(([k]) => k.startsWith(CAPTURE_PREFIX))
      .map(([, v]) => v);
  } catch {
    return [];
  }
}

const captureRecord = (key, item, paused) => ({
  key,
  id: item.id,
  url: item.url,
  startTime: item.startTime,
  paused,
  at: Date.now(),
});
const noteCapture = (key, item, paused) => api.storage.local.set({ [recordKey(key)]: captureRecord(key, item, paused) });
const forgetCapture = (key) => api.storage.local.remove(recordKey(key)).catch(() => {});

/** The browser's download a record names, in this session's ids: the same URL and start time, else (a session
 * restore may restamp it) the download of that URL whose start is nearest. */
async function recordedItem(rec) {
  const byId = await current(rec.id);
  if (byId && byId.url === rec.url && byId.startTime === rec.startTime) return byId;
  let all = [];
  try {
    all = await api.downloads.search({ url: rec.url });
  } catch {
    return null;
  }
  const distance = (d) => Math.abs((Date.parse(d.startTime) || 0) - (Date.parse(rec.startTime) || 0));
  return all.sort((a, b) => distance(a) - distance(b))[0] ?? null;
}

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

/** Hand a download over. Resolves to `{id, joined?}` when SDM has it (`joined`: another capture's download of the
 * same URL), `null` when it does not (the host refused, or cannot be reached). Never leaves the answer unknown: a
 * lost reply is followed by a `find`. */
async function handOver(add) {
  try {
    const { id, existing } = await request("add", add, timing.addMs);
    // A capture that joined another one's download must never remove it: that capture's browser copy is gone.
    return existing ? { id, joined: true } : { id };
  } catch (e) {
    if (!transient(e)) {
      console.info(`SDM: the host did not take ${add.url}: ${e.message}; the browser keeps it`);
      return null;
    }
    try {
      const found = await findByKey(add.client_key);
      return found ? { id: found.id } : null;
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
    await noteCapture(key, item, true);
    const filename = await chosenName(item);
    const add = await buildAdd({ ...item, filename }, url, key);
    const failed = await failedMatch({ ...item, filename });
    if (failed) {
      await makeOffer(captureRecord(key, item, true), failed, add);
      return;
    }
    taken = await handOver(add);
  } catch (e) {
    console.warn(`SDM: could not hand download ${item.id} over (${e.message}); the browser continues it`);
  }
  if (taken !== null) await dropBrowserCopy(item.id);
  else await api.downloads.resume(item.id).catch((err) => console.warn("SDM: resume failed:", err));
  await forgetCapture(key);
}

/** Firefox may tell of a download before its webRequest listener has seen the request (a POST, say): wait a little
 * for it. */
async function seenRequest(url) {
  const deadline = Date.now() + timing.seenMs;
  while (!memory.recall(url) && Date.now() < deadline) await sleep(25);
}

async function captureFirefox(item, url, key) {
  await seenRequest(url);
  const sized = await withSize(item);
  const reason = reasonToLeave(sized, settings, memory.recall(url));
  if (reason) {
    console.info(`SDM: leaving download ${item.id} to the browser: ${reason}`);
    return;
  }
  await noteCapture(key, item, false);
  const add = await buildAdd(sized, url, key);
  const failed = await failedMatch(sized);
  if (failed) {
    await makeOffer(captureRecord(key, item, false), failed, add);
    return;
  }
  const taken = await handOver(add);
  if (taken !== null) await keepOneCopy(await current(item.id), taken);
  await forgetCapture(key);
}

// --- offers: the browser started the file a failed SDM download was fetching --------------------------------------

/** The failed SDM download of the file `item` is (the same name and the same known size), if any. The host not
 * answering means no offer: the capture goes on as usual. */
async function failedMatch(item) {
  const name = basename(item.filename);
  const size = knownSize(item);
  if (!name || size === 0) return null;
  try {
    for (let offset = 0; ; ) {
      const page = await request("list", { offset, limit: LIST_PAGE });
      const found = page.downloads.find((d) => d.status === "failed" && d.filename === name && d.total === size);
      if (found) return found;
      offset += page.downloads.length;
      if (page.downloads.length === 0 || offset >= page.total) return null;
    }
  } catch (e) {
    console.info(`SDM: cannot look for a failed download of ${name} (${e.message})`);
    return null;
  }
}

/** Hold the browser's download as an offer to the failed download `failed`: saved in its capture record (which
 * the popup reads), told by a notification, and handed over as any capture when nobody answers in time. */
async function makeOffer(rec, failed, add) {
  const offer = { failedId: failed.id, name: failed.filename, add };
  const withOffer = { ...rec, offer };
  await api.storage.local.set({ [recordKey(rec.key)]: withOffer });
  // Unanswered in time (an answer under way counts as one): an ordinary capture. Should that fail, the record is
  // left to the settling pass.
  const expire = () => {
    const held = offers.get(rec.key);
    if (held?.busy) {
      // Should that answer fail, the offer still expires.
      held.expiry = setTimeout(expire, SETTLE_AGAIN_MS);
      return;
    }
    answerOffer(rec.key, "separate").catch(() => {
      offers.delete(rec.key);
      inFlight.delete(rec.key);
      settle().catch(() => {});
    });
  };
  const expiry = setTimeout(expire, RECORD_MAX_AGE_MS);
  offers.set(rec.key, { rec: withOffer, expiry, busy: false });
  inFlight.add(rec.key);
  notify(`sdm-offer-${failed.id}`, "Download failed in SDM started again", `${failed.filename}: open SDM to use the browser's address`);
}

/**
 * The popup's answer to an offer: "use" (the failed download takes the browser's address and headers; with
 * "restart" even when it serves another file) or "separate" (a capture as any other). Resolves when done; rejects
 * with the host's error (a `conflict` when the address serves another file), the offer kept for another answer.
 */
export async function answerOffer(key, answer) {
  const held = offers.get(key);
  if (!held) throw new HostError("not_found", "this offer is gone: the browser's download was handled already");
  if (held.busy) throw new HostError("invalid_state", "this offer is being answered already");
  held.busy = true;
  try {
    if (answer === "separate") await handOverOffer(held.rec);
    else await useOffer(held.rec, answer === "restart");
    clearTimeout(held.expiry);
    offers.delete(key);
    inFlight.delete(key);
  } finally {
    held.busy = false;
  }
}

/** "Use it": the failed download goes on from the browser's address, with the browser's headers; the browser's
 * copy goes once SDM has accepted the address. */
async function useOffer(rec, restart) {
  const { failedId, add } = rec.offer;
  const fields = { download_id: failedId, url: add.url, headers: add.headers };
  if (restart) fields.restart = true;
  await request("set_url", fields, timing.addMs);
  await request("resume", { download_id: failedId }).catch((e) => console.warn(`SDM: cannot resume ${failedId}:`, e));
  const now = await recordedItem(rec);
  if (now) await dropBrowserCopy(now.id);
  await forgetCapture(rec.key);
}

/** An offer handed over as any capture: SDM takes it as a new download, or the browser goes on with it. */
async function handOverOffer(rec) {
  const taken = await handOver(rec.offer.add);
  const now = await recordedItem(rec);
  if (taken !== null) await keepOneCopy(now, taken);
  else if (now && rec.paused) await api.downloads.resume(now.id).catch(() => {});
  await forgetCapture(rec.key);
}

/** An offer a stopped worker left: when the failed download already has the offered address, it was used and only
 * the browser's copy is left to drop; otherwise it is handed over as any capture. */
async function settleOffer(rec) {
  let used = false;
  try {
    used = (await findDownload(rec.offer.failedId))?.url === rec.offer.add.url;
  } catch {
    // The host cannot say: handing over tells the same (a lost host leaves the download with the browser).
  }
  if (!used) return handOverOffer(rec);
  const item = await recordedItem(rec);
  if (item) await dropBrowserCopy(item.id);
  await forgetCapture(rec.key);
}

/** SDM's download `id`, `null` when the queue has none. */
async function findDownload(id) {
  for (let offset = 0; ; ) {
    const page = await request("list", { offset, limit: LIST_PAGE });
    const found = page.downloads.find((d) => d.id === id);
    if (found) return found;
    offset += page.downloads.length;
    if (page.downloads.length === 0 || offset >= page.total) return null;
  }
}

function onMessage(msg, _sender, reply) {
  if (msg?.type !== "sdm-offer") return false;
  answerOffer(String(msg.key), msg.answer)
    .then(() => reply({ ok: true }))
    .catch((e) => reply({ ok: false, code: e.code ?? "internal", message: e.message ?? String(e) }));
  // The answer comes later: keep the channel open.
  return true;
}

/** SDM has download `taken` of the browser's download `item`: drop the browser's copy, or, when the browser already
 * finished it, SDM's. */
async function keepOneCopy(item, taken) {
  if (item?.state === "complete") {
    if (taken.joined) return;
    console.info(`SDM: the browser finished ${item.url} first; SDM drops its copy`);
    await request("remove", { download_id: taken.id, delete_file: true }).catch(() => {});
  } else if (item) {
    await dropBrowserCopy(item.id);
  }
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
  // Captures of one URL take turns, oldest first, so the first download's name is the one SDM keeps and a second
  // capture joins it (Firefox names the second browser copy `name(1)` while both run).
  const before = byUrl.get(url) ?? Promise.resolve();
  const mine = before.then(() => (isFirefox ? captureFirefox(item, url, key) : captureChromium(item, url, key)));
  const turn = mine.catch(() => {});
  byUrl.set(url, turn);
  try {
    await mine;
  } finally {
    // An offer stays in flight until it is answered (see answerOffer).
    if (!offers.has(key)) inFlight.delete(key);
    if (byUrl.get(url) === turn) byUrl.delete(url);
  }
}

/**
 * Settle the captures an earlier worker or browser session started and did not finish (it was stopped, or the
 * browser closed): when the host has the download, the browser's copy goes (or SDM's, if the browser finished
 * first); otherwise what was paused is resumed. Runs at worker start and on each host connect.
 */
export function settle() {
  // One pass at a time: a reconnect during a pass queues another pass behind it.
  settling = settling.then(settleOnce, settleOnce);
  return settling;
}

let settling = Promise.resolve();

async function settleOnce() {
  await loaded;
  for (const rec of await captureRecords()) {
    if (inFlight.has(rec.key)) continue;
    if (rec.offer) {
      await settleOffer(rec).catch((e) => console.warn(`SDM: settling the offer ${rec.key} failed:`, e));
      continue;
    }
    let taken = null;
    try {
      const found = await findByKey(rec.key);
      if (found) taken = { id: found.id };
    } catch (e) {
      console.warn(`SDM: cannot ask the host about capture ${rec.key} (${e.message}); the browser continues it`);
    }
    const item = await recordedItem(rec);
    if (taken !== null) {
      // Firefox lists the last session's downloads again a little after start: look again soon, within reason.
      if (!item && Date.now() - rec.at < RECORD_MAX_AGE_MS) {
        setTimeout(() => settle().catch(() => {}), SETTLE_AGAIN_MS);
        continue;
      }
      await keepOneCopy(item, taken);
    } else if (item && rec.paused) {
      await api.downloads.resume(item.id).catch(() => {});
    }
    await forgetCapture(rec.key);
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
  api.runtime.onMessage?.addListener(onMessage);
  // The browser ignores the returned promise; the unit tests await it.
  api.downloads.onCreated.addListener((item) =>
    onCreated(item).catch((e) => console.warn("SDM: capture failed:", e)),
  );
  onConnect(() => settle().catch((e) => console.warn("SDM: settling earlier captures failed:", e)));
}
