// The extension's pure decisions (extension/policy.js), without a browser.

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  addHeaders,
  basename,
  captureSettings,
  DEFAULT_CAPTURE,
  HeaderMemory,
  isExcluded,
  reasonToLeave,
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
