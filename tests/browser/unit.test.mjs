// The extension's pure decisions (extension/policy.js), without a browser.

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  addHeaders,
  basename,
  captureKey,
  captureSettings,
  DEFAULT_CAPTURE,
  HeaderMemory,
  isExcluded,
  expectation,
  reasonToLeave,
  referrerFor,
  sendableCookies,
  siteOf,
} from "../../extension/policy.js";

const item = (over = {}) => ({ id: 1, url: "https://h.example/f.iso", state: "in_progress", totalBytes: 0, fileSize: 0, ...over });

test("unknown sizes and large files are captured by default", () => {
  assert.equal(reasonToLeave(item(), DEFAULT_CAPTURE, null), null);
  assert.equal(reasonToLeave(item({ fileSize: -1, totalBytes: -1 }), DEFAULT_CAPTURE, null), null);
  assert.equal(reasonToLeave(item({ totalBytes: 5 * 1024 * 1024 }), DEFAULT_CAPTURE, null), null);
  assert.match(reasonToLeave(item({ totalBytes: 1000 }), DEFAULT_CAPTURE, null), /smaller/);
});

test("blob, data and POST downloads stay with the browser", () => {
  assert.match(reasonToLeave(item({ url: "blob:https://h/x" }), DEFAULT_CAPTURE, null), /blob/);
  assert.match(reasonToLeave(item({ url: "data:text/plain,hi" }), DEFAULT_CAPTURE, null), /data/);
  assert.match(reasonToLeave(item(), DEFAULT_CAPTURE, { method: "POST", headers: {} }), /POST/);
});

test("settings turn capture off, raise the minimum, or exclude sites and their subdomains", () => {
  const off = captureSettings({ capture_enabled: false });
  assert.match(reasonToLeave(item(), off, null), /off/);
  const big = captureSettings({ capture_min_size: 10 * 1024 * 1024 });
  assert.match(reasonToLeave(item({ totalBytes: 5 * 1024 * 1024 }), big, null), /smaller/);
  assert.equal(reasonToLeave(item(), captureSettings({ capture_exclude: ["other.example"] }), null), null);
  assert.match(reasonToLeave(item(), captureSettings({ capture_exclude: ["h.example"] }), null), /excluded/);
  assert.ok(isExcluded("dl.h.example", ["h.example"]));
  assert.ok(isExcluded("H.example", ["*.h.example"]));
  assert.ok(!isExcluded("evilh.example", ["h.example"]));
});

test("the final URL is the one judged", () => {
  assert.match(reasonToLeave(item({ url: "https://h/x", finalUrl: "data:," }), DEFAULT_CAPTURE, null), /data/);
});

test("header memory forgets old and excess entries", () => {
  const m = new HeaderMemory({ ttlMs: 1000, maxEntries: 2 });
  m.remember("a", "GET", [{ name: "cookie", value: "s=1" }, { name: "Accept", value: "*/*" }], 0);
  assert.deepEqual(m.recall("a", 500).headers, { Cookie: "s=1" });
  assert.equal(m.recall("a", 1500), null);
  m.remember("a", "GET", [], 0);
  m.remember("b", "GET", [], 0);
  m.remember("c", "GET", [], 0);
  assert.equal(m.recall("a", 0), null);
  assert.ok(m.recall("c", 0));
});

test("add headers prefer what the browser sent, else the URL's cookies", () => {
  const seen = { headers: { Cookie: "s=1", "User-Agent": "UA1", Referer: "https://p/" } };
  assert.deepEqual(addHeaders({ seen, cookies: [{ name: "x", value: "y" }], userAgent: "UA2", referrer: "https://q/" }), {
    Cookie: "s=1",
    "User-Agent": "UA1",
    Referer: "https://p/",
    "Accept-Encoding": "identity",
  });
  assert.deepEqual(addHeaders({ seen: null, cookies: [{ name: "a", value: "1" }, { name: "b", value: "2" }], userAgent: "UA2" }), {
    Cookie: "a=1; b=2",
    "User-Agent": "UA2",
    "Accept-Encoding": "identity",
  });
});

test("basename takes the last path segment", () => {
  assert.equal(basename("/home/u/Downloads/f.iso"), "f.iso");
  assert.equal(basename("C:\\Users\\u\\f.iso"), "f.iso");
  assert.equal(basename(""), "");
});

test("a seen request's headers are sent as they were: no cookie is added to a request that carried none", () => {
  const seen = { headers: { "User-Agent": "UA1" } };
  assert.deepEqual(addHeaders({ seen, cookies: [{ name: "x", value: "y" }], userAgent: "UA2" }), {
    "User-Agent": "UA1",
    "Accept-Encoding": "identity",
  });
  // Chromium hides the Referer of an `<a download>` request from webRequest: the download's own stands in.
  assert.equal(addHeaders({ seen, cookies: [], userAgent: "UA2", referrer: "https://q/" }).Referer, "https://q/");
});

test("jar cookies: SameSite=Strict only for a same-site referrer", () => {
  const jar = [
    { name: "lax", value: "1", sameSite: "lax" },
    { name: "strict", value: "2", sameSite: "strict" },
    { name: "none", value: "3", sameSite: "no_restriction" },
  ];
  const names = (cs) => cs.map((c) => c.name).join(",");
  assert.equal(names(sendableCookies(jar, "http://127.0.0.1:8/f", "http://localhost:8/p")), "lax,none");
  assert.equal(names(sendableCookies(jar, "http://127.0.0.1:8/f", "http://127.0.0.1:9/p")), "lax,strict,none");
  assert.equal(names(sendableCookies(jar, "https://dl.h.example/f", "https://www.h.example/")), "lax,strict,none");
  assert.equal(names(sendableCookies(jar, "https://h.example/f", undefined)), "lax,none");
  assert.equal(siteOf("http://[::1]:8/"), "[::1]");
  assert.equal(siteOf("not a url"), null);
});

test("the context menu's referrer is the page when same-origin, else its origin only", () => {
  assert.equal(referrerFor("http://a.example/p?q=1", "http://a.example/f.bin"), "http://a.example/p?q=1");
  assert.equal(referrerFor("http://a.example/p?q=1", "http://b.example/f.bin"), "http://a.example/");
  assert.equal(referrerFor("http://a.example:81/p", "http://a.example/f.bin"), "http://a.example:81/");
  assert.equal(referrerFor("about:blank", "http://a.example/f.bin"), undefined);
  assert.equal(referrerFor(undefined, "http://a.example/f.bin"), undefined);
});

test("private downloads stay with the browser", () => {
  assert.match(reasonToLeave(item({ incognito: true }), DEFAULT_CAPTURE, null), /private/);
});

test("a capture's key and expectation", () => {
  assert.equal(captureKey("abc", { id: 4, startTime: "1970-01-01T00:00:01.000Z" }), "abc/4/1000");
  assert.equal(captureKey("abc", { id: 4 }), "abc/4/0");
  assert.deepEqual(expectation(item({ totalBytes: 10, mime: "application/zip" })), { size: 10, mime: "application/zip" });
  assert.deepEqual(expectation(item({ totalBytes: -1, fileSize: -1 })), {});
});
