// Taking over the browser's own downloads. Order matters (FIELD-NOTES): pause the browser's download, ask the host
// to add it, and only on the host's acknowledgement cancel and erase it; on any failure resume it, so that nothing is
// ever lost because SDM was missing or slow.

import { api } from "./api.js";
import { request } from "./host.js";
import { addHeaders, basename, captureSettings, DEFAULT_CAPTURE, HeaderMemory, reasonToLeave } from "./policy.js";

const STORAGE_KEY = "captureSettings";
const memory = new HeaderMemory();
let settings = { ...DEFAULT_CAPTURE };
// A cold worker may see a download before the host answers; the last known settings are kept in storage for that.
const loaded = api.storage.local
  .get(STORAGE_KEY)
  .then((stored) => {
    if (stored?.[STORAGE_KEY]) settings = captureSettings(stored[STORAGE_KEY]);
  })
  .catch(() => {});

/** The host's settings (from get_settings or a settings event). */
export function setCaptureSettings(hostSettings) {
  settings = captureSettings(hostSettings);
  api.storage.local.set({ [STORAGE_KEY]: settings }).catch(() => {});
}

/** Headers to send with a download of `url`: what the browser sent for it, else its cookies and our user agent. */
export async function headersFor(url, referrer) {
  const seen = memory.recall(url);
  let cookies = [];
  if (!seen?.headers.Cookie) {
    try {
      cookies = await api.cookies.getAll({ url });
    } catch (e) {
      console.warn("SDM: cannot read cookies:", e);
    }
  }
  return addHeaders({ seen, cookies, userAgent: navigator.userAgent, referrer });
}

function rememberRequest(details) {
  memory.remember(details.url, details.method, details.requestHeaders);
}

async function onCreated(item) {
  await loaded;
  const url = item.finalUrl || item.url;
  const seen = memory.recall(url);
  const reason = reasonToLeave(item, settings, seen);
  if (reason) {
    console.info(`SDM: leaving download ${item.id} to the browser: ${reason}`);
    return;
  }
  try {
    await api.downloads.pause(item.id);
  } catch (e) {
    // Already finished or failed: nothing to take over.
    console.info(`SDM: cannot pause download ${item.id}, leaving it: ${e?.message ?? e}`);
    return;
  }
  // From here on the browser's download is paused: any failure at all must resume it.
  try {
    const add = { url, headers: await headersFor(url, item.referrer) };
    const name = basename(item.filename);
    if (name) add.filename = name;
    if (item.referrer) add.referrer = item.referrer;
    await request("add", add);
  } catch (e) {
    console.warn(`SDM: could not hand download ${item.id} over (${e.message}); the browser continues it`);
    await api.downloads.resume(item.id).catch((err) => console.warn("SDM: resume failed:", err));
    return;
  }
  await api.downloads.cancel(item.id).catch(() => {});
  await api.downloads.erase({ id: item.id }).catch(() => {});
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
  // The browser ignores the returned promise; the unit tests await it.
  api.downloads.onCreated.addListener((item) =>
    onCreated(item).catch((e) => console.warn("SDM: capture failed:", e)),
  );
}
