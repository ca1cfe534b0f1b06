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
  const size = item.fileSize > 0 ? item.fileSize : item.totalBytes > 0 ? item.totalBytes : 0;
  // Unknown sizes (0 or -1) are captured: big downloads often do not announce a length.
  if (size > 0 && size < settings.capture_min_size) return "smaller than the minimum size";
  return null;
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

/** The headers sent with an `add`: what the browser sent if known, else the URL's own cookies and our user agent. */
export function addHeaders({ seen, cookies, userAgent, referrer }) {
  const h = {};
  const s = seen?.headers ?? {};
  const cookie = s.Cookie ?? cookieHeader(cookies ?? []);
  if (cookie) h.Cookie = cookie;
  h["User-Agent"] = s["User-Agent"] ?? userAgent;
  const ref = s.Referer ?? referrer;
  if (ref) h.Referer = ref;
  // Compressed responses break ranged downloads.
  h["Accept-Encoding"] = "identity";
  return h;
}
