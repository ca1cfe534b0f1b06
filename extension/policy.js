// Pure decisions, no browser APIs: what to capture, which headers to remember. Unit-tested under node
// (tests/browser/unit.test.mjs).

export const MIB = 1024 * 1024;

/** The host's capture settings until it tells us otherwise (they match protocol::Settings::default()). */
export const DEFAULT_CAPTURE = Object.freeze({
  capture_enabled: true,
  capture_min_size: MIB,
  capture_exclude: [],
});

/** Keep only the capture fields of the host's settings, with defaults for anything missing. */
export function captureSettings(settings) {
  const s = settings ?? {};
  return {
    capture_enabled: typeof s.capture_enabled === "boolean" ? s.capture_enabled : DEFAULT_CAPTURE.capture_enabled,
    capture_min_size: Number.isFinite(s.capture_min_size) ? s.capture_min_size : DEFAULT_CAPTURE.capture_min_size,
    capture_exclude: Array.isArray(s.capture_exclude) ? s.capture_exclude.map(String) : [],
  };
}

/** Whether `host` is one of `excluded` or a subdomain of one. */
export function isExcluded(host, excluded) {
  const h = host.toLowerCase();
  return excluded.some((entry) => {
    const e = entry.trim().toLowerCase().replace(/^\*\./, "");
    return e !== "" && (h === e || h.endsWith(`.${e}`));
  });
}

/**
 * Why the browser should keep this download, or `null` to hand it to SDM.
 * `item` is a downloads.DownloadItem; `seen` is what webRequest saw of its request, if anything.
 */
export function reasonToLeave(item, settings, seen) {
  if (!settings.capture_enabled) return "capture is off";
  // Private downloads stay with the browser: SDM keeps a queue, history and state on disk, and a private window's
  // download must leave none of that behind.
  if (item.incognito) return "private window";
  const url = item.finalUrl || item.url || "";
  let parsed;
  try {
    parsed = new URL(url);
  } catch {
    return "not a URL";
  }
  // blob: and data: live only inside the browser; SDM could not fetch them.
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") return `${parsed.protocol} URL`;
  if (item.state && item.state !== "in_progress") return `already ${item.state}`;
  // A POST's body cannot be replayed from outside the browser.
  if (seen && seen.method && seen.method !== "GET") return `${seen.method} request`;
  if (isExcluded(parsed.hostname, settings.capture_exclude)) return "excluded site";
  const size = knownSize(item);
  // Unknown sizes (0 or -1) are captured: big downloads often do not announce a length.
  if (size > 0 && size < settings.capture_min_size) return "smaller than the minimum size";
  return null;
}

/** The download's size when the browser knows it, else 0 (Firefox reports -1 in `fileSize` until the end). */
export function knownSize(item) {
  if (item.totalBytes > 0) return item.totalBytes;
  return item.fileSize > 0 ? item.fileSize : 0;
}

/** The last path segment of a browser-chosen file path ("" when the browser has not chosen one yet). */
export function basename(path) {
  if (!path) return "";
  return path.split(/[\\/]/).pop() ?? "";
}

/** A `Cookie` header from cookies.getAll() results. */
export function cookieHeader(cookies) {
  return cookies.map((c) => `${c.name}=${c.value}`).join("; ");
}

/** The headers SDM needs from a webRequest `requestHeaders` array. */
export function pickHeaders(requestHeaders) {
  const out = {};
  for (const { name, value } of requestHeaders ?? []) {
    const lower = name.toLowerCase();
    if (value === undefined) continue;
    if (lower === "cookie") out.Cookie = value;
    else if (lower === "authorization") out.Authorization = value;
    else if (lower === "user-agent") out["User-Agent"] = value;
    else if (lower === "referer") out.Referer = value;
  }
  return out;
}

/**
 * What the browser last sent for each URL, for a short while: a download's cookies, referrer and user agent are
 * exactly those of the request that started it. Bounded in time and in entries.
 */
export class HeaderMemory {
  constructor({ ttlMs = 60_000, maxEntries = 500 } = {}) {
    this.ttlMs = ttlMs;
    this.maxEntries = maxEntries;
    this.entries = new Map();
  }

  remember(url, method, requestHeaders, now = Date.now()) {
    this.entries.delete(url);
    this.entries.set(url, { at: now, method, headers: pickHeaders(requestHeaders) });
    // Map keeps insertion order, so the first keys are the oldest.
    for (const key of this.entries.keys()) {
      if (this.entries.size <= this.maxEntries) break;
      this.entries.delete(key);
    }
  }

  recall(url, now = Date.now()) {
    const entry = this.entries.get(url);
    if (!entry) return null;
    if (now - entry.at > this.ttlMs) {
      this.entries.delete(url);
      return null;
    }
    return entry;
  }
}

/**
 * The headers sent with an `add`. When the browser's own request for the URL was seen, exactly what it sent: no
 * cookie it did not send is added (it may have withheld a SameSite=Strict cookie on a cross-site navigation).
 * Otherwise the URL's cookies from the download's own store, as filtered by `sendableCookies`.
 */
export function addHeaders({ seen, cookies, userAgent, referrer }) {
  const h = {};
  const s = seen?.headers ?? {};
  const cookie = seen ? s.Cookie : cookieHeader(cookies ?? []);
  if (cookie) h.Cookie = cookie;
  if (s.Authorization) h.Authorization = s.Authorization;
  h["User-Agent"] = s["User-Agent"] ?? userAgent;
  // Chromium does not show webRequest the Referer of a request started by `<a download>`, though it sends one: the
  // download's own referrer (already cut to the origin across origins by the caller) stands in for it.
  const ref = s.Referer ?? referrer;
  if (ref) h.Referer = ref;
  // Compressed responses break ranged downloads.
  h["Accept-Encoding"] = "identity";
  return h;
}

/**
 * A host's site, for SameSite: the last two labels of a name (an approximation of the registrable domain without
 * the public suffix list, which errs towards "cross-site" only for names under multi-label suffixes), the whole of
 * an IP address or a single-label name.
 */
export function siteOf(url) {
  let host;
  try {
    host = new URL(url).hostname.toLowerCase();
  } catch {
    return null;
  }
  if (/^[\d.]+$/.test(host) || host.includes(":") || host.startsWith("[")) return host;
  return host.split(".").slice(-2).join(".");
}

/** Cookies from `cookies.getAll({url})` that the browser itself would send on a navigation to that URL from
 * `referrer`: SameSite=Strict ones only when the navigation is same-site. */
export function sendableCookies(cookies, url, referrer) {
  const sameSite = referrer ? siteOf(referrer) === siteOf(url) : false;
  return (cookies ?? []).filter((c) => c.sameSite !== "strict" || sameSite);
}

/** The Referer for a link taken from a page (the context menu): the page itself when it is the link's origin, else
 * the page's origin only, as the browser's default referrer policy sends it across origins. */
export function referrerFor(pageUrl, targetUrl) {
  if (!pageUrl) return undefined;
  try {
    const page = new URL(pageUrl);
    if (page.protocol !== "http:" && page.protocol !== "https:") return undefined;
    return page.origin === new URL(targetUrl).origin ? pageUrl : `${page.origin}/`;
  } catch {
    return undefined;
  }
}

/** A capture's idempotency key: this browser profile's random id and the download's id and start, so a retried
 * `add` is recognised by the host and two browsers sharing one service never collide. */
export function captureKey(instance, item) {
  const start = Date.parse(item.startTime ?? "") || 0;
  return `${instance}/${item.id}/${start}`;
}

/** What SDM's first response must match for the hand-off to go ahead (see the host's verified add). */
export function expectation(item) {
  const out = {};
  const size = knownSize(item);
  if (size > 0) out.size = size;
  if (item.mime) out.mime = item.mime;
  return out;
}
