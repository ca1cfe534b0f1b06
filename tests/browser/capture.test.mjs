// The capture contract (issue 13) in real browsers: every way a page starts a download, run in headless Chromium and
// headless Firefox ESR with the extension's packages, the real `sdm` host and service, and the trigger server (two
// sites on the loopback). Each trigger ends in exactly one exact copy of the file: in SDM's download_dir when SDM
// takes it (the browser's copy cancelled and erased), in the browser's own folder otherwise (SDM's queue untouched).
// The request log says which credentials reached the server, and from which program.

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, before, describe, test } from "node:test";

import { GECKO_ID, KINDS, launch } from "./browsers.mjs";
import {
  FIREFOX_XPI,
  readZip,
  ServiceClient,
  serviceLog,
  sha256File,
  sleep,
  startService,
  stopServicesOf,
  tempDir,
  waitFor,
} from "./support.mjs";
import { cookiesOf, startTriggerServer } from "./trigger-server.mjs";

const KIB = 1024;
const MIB = 1024 * KIB;
/** Per-response throttle for files SDM should take: the browser's own copy must still be running when SDM's verified
 * add comes back (Firefox keeps its download running meanwhile), and SDM's 8 connections each get this much. */
const RATE = 512 * KIB;
const FINAL = new Set(["completed", "failed", "cancelled"]);
const PARTIAL = /\.(part|crdownload)$/;

let server;
before(async () => {
  server = await startTriggerServer();
});
after(async () => {
  await server?.close();
});

const listDir = (dir) => (fs.existsSync(dir) ? fs.readdirSync(dir).filter((n) => !n.startsWith(".")) : []);
const short = (u) => (typeof u === "string" ? u.slice(0, 200) : u);
const sortedCookies = (req) => cookiesOf(req).sort().join("; ");

/** The link page most triggers use: site A (unless `site`), one element #dl. */
function linkPage(href, { attrs = "", cookies = [], site = "A" } = {}) {
  const page = server.page(`<a id="dl" href="${href}" ${attrs}>download</a>`, { cookies });
  return page.url(site);
}

/**
 * The triggers. `make(kind)` registers its routes and returns {name (the expected file name), file (the served file,
 * for its sha256 and path), urls (every address the download passes through), act(b) (start it), expect ("sdm",
 * "browser" or "either"), check(reqs, outcome) (credential assertions on the request log)}.
 */
const TRIGGERS = [
  {
    title: "plain link above the 1 MiB threshold: SDM takes it",
    make() {
      const f = server.file("plain.bin", { size: 2 * MIB, rate: RATE });
      return { file: f, expect: "sdm", act: (b) => clickOn(b, linkPage(f.path)) };
    },
  },
  {
    title: '<a download="chosen name.bin">: SDM takes it under the chosen name',
    make() {
      const f = server.file("attr-source.bin", { size: 2 * MIB, rate: RATE, disposition: "none" });
      return {
        file: f,
        name: "chosen name.bin",
        expect: "sdm",
        act: (b) => clickOn(b, linkPage(f.path, { attrs: 'download="chosen name.bin"' })),
      };
    },
  },
  {
    title: "Content-Disposition on GET only (HEAD without it): SDM names it as the browser did",
    make() {
      const f = server.file("get-only name.bin", { size: 2 * MIB, rate: RATE, disposition: "get", urlName: "fetch" });
      return { file: f, expect: "sdm", act: (b) => clickOn(b, linkPage(f.path)) };
    },
  },
  {
    title: "redirect chain with a cross-origin hop (A → B → A): SDM takes the final file",
    make() {
      const f = server.file("redirected.bin", { size: 2 * MIB, rate: RATE });
      const hop2 = server.redirect(f.url("A"));
      const hop1 = server.redirect(hop2.url("B"));
      return {
        file: f,
        urls: [hop1.url("A"), hop2.url("B"), f.url("A")],
        expect: "sdm",
        act: (b) => clickOn(b, linkPage(hop1.url("A"))),
      };
    },
  },
  {
    title: "file behind a SameSite=Lax cookie: SDM sends the cookie",
    make() {
      const cookie = `lax_c=${token()}`;
      const f = server.file("lax-cookie.bin", { size: 2 * MIB, rate: RATE, cookie });
      return {
        file: f,
        expect: "sdm",
        act: (b) => clickOn(b, linkPage(f.path, { cookies: [`${cookie}; Path=/; SameSite=Lax`] })),
        check(reqs) {
          for (const r of reqs.sdm) assert.ok(cookiesOf(r).includes(cookie), `SDM's ${r.method} carried ${cookie}: ${r.headers.cookie}`);
        },
      };
    },
  },
  {
    title: "file behind a SameSite=Strict cookie, same-site link: SDM sends the cookie the browser sent",
    make() {
      const cookie = `strict_c=${token()}`;
      const f = server.file("strict-cookie.bin", { size: 2 * MIB, rate: RATE, cookie });
      return {
        file: f,
        expect: "sdm",
        act: (b) => clickOn(b, linkPage(f.path, { cookies: [`${cookie}; Path=/; SameSite=Strict`] })),
        check(reqs) {
          assert.ok(cookiesOf(reqs.browser.at(-1)).includes(cookie), "the browser sent its Strict cookie same-site");
          for (const r of reqs.sdm) assert.ok(cookiesOf(r).includes(cookie), `SDM's ${r.method} carried ${cookie}: ${r.headers.cookie}`);
        },
      };
    },
  },
  {
    title: "cross-site link to a site that set a Strict cookie earlier: the browser withholds it, and so does SDM",
    make() {
      const lax = `b_lax=${token()}`;
      const strict = `b_strict=${token()}`;
      const f = server.file("cross-site.bin", { size: 2 * MIB, rate: RATE, cookie: lax });
      const setter = server.page("site B sets its cookies", {
        cookies: [`${lax}; Path=/; SameSite=Lax`, `${strict}; Path=/; SameSite=Strict`],
      });
      return {
        file: f,
        urls: [f.url("B")],
        expect: "sdm",
        async act(b) {
          const p = await b.newPage(setter.url("B"));
          await p.close();
          return clickOn(b, linkPage(f.url("B"), { site: "A" }));
        },
        check(reqs) {
          const mine = reqs.browser.at(-1);
          assert.ok(cookiesOf(mine).includes(lax), `the browser sent the Lax cookie on a top-level cross-site GET: ${mine.headers.cookie}`);
          assert.ok(!cookiesOf(mine).includes(strict), `the browser withheld the Strict cookie: ${mine.headers.cookie}`);
          for (const r of reqs.sdm) {
            assert.ok(!cookiesOf(r).includes(strict), `SDM's ${r.method} must not carry the Strict cookie: ${r.headers.cookie}`);
            assert.ok(cookiesOf(r).includes(lax), `SDM's ${r.method} carried the Lax cookie: ${r.headers.cookie}`);
          }
        },
      };
    },
  },
  {
    title: "link to another origin: SDM sends the Referer the browser sent (the page's origin)",
    make() {
      const f = server.file("other-origin.bin", { size: 2 * MIB, rate: RATE });
      return {
        file: f,
        urls: [f.url("B")],
        expect: "sdm",
        act: (b) => clickOn(b, linkPage(f.url("B"))),
        check(reqs) {
          assert.equal(reqs.browser.at(-1).headers.referer, `${server.A}/`, "the browser sent the origin only");
        },
      };
    },
  },
  {
    title: "location.href = file: SDM takes it",
    make() {
      const f = server.file("location-href.bin", { size: 2 * MIB, rate: RATE });
      const page = server.page(`<button id="dl" onclick="location.href='${f.path}'">go</button>`);
      return { file: f, expect: "sdm", act: (b) => clickOn(b, page.url("A")) };
    },
  },
  {
    title: "window.open(file): SDM takes it",
    make() {
      const f = server.file("window-open.bin", { size: 2 * MIB, rate: RATE });
      const page = server.page(`<button id="dl" onclick="window.open('${f.path}')">open</button>`);
      return { file: f, expect: "sdm", act: (b) => clickOn(b, page.url("A")) };
    },
  },
  {
    title: "POST form: stays with the browser",
    make() {
      const f = server.file("posted.bin", { size: 2 * MIB, rate: RATE, methods: ["POST", "GET", "HEAD"] });
      const page = server.page(`<form method="post" action="${f.path}"><input name="q" value="1"><button id="dl">send</button></form>`);
      return { file: f, expect: "browser", act: (b) => clickOn(b, page.url("A")) };
    },
  },
  {
    title: "blob: link: stays with the browser",
    make() {
      const f = server.file("blob-source.bin", { size: 1536 * KIB });
      const page = server.page(`<a id="dl" download="blob.bin">blob</a><script>
        fetch(${JSON.stringify(f.path)}).then((r) => r.blob()).then((b) => {
          const a = document.getElementById("dl"); a.href = URL.createObjectURL(b); a.dataset.ready = "1"; });
      </script>`);
      return {
        file: f,
        name: "blob.bin",
        urls: [],
        expect: "browser",
        async act(b) {
          const p = await b.newPage(page.url("A"));
          await p.waitForSelector("#dl[data-ready]");
          await p.click("#dl");
          return p;
        },
        check(reqs) {
          assert.equal(reqs.sdm.length, 0, "SDM never fetched the blob's source");
        },
      };
    },
  },
  {
    title: "data: link: stays with the browser",
    make() {
      const f = server.file("data-source.bin", { size: 1200 * KIB });
      const href = `data:application/octet-stream;base64,${f.body.toString("base64")}`;
      const page = server.page(`<a id="dl" download="data.bin" href="${href}">data</a>`);
      return { file: f, name: "data.bin", urls: [], expect: "browser", act: (b) => clickOn(b, page.url("A")) };
    },
  },
  {
    title: "below the 1 MiB threshold (512 KiB): stays with the browser",
    make() {
      const f = server.file("small.bin", { size: 512 * KIB });
      return { file: f, expect: "browser", act: (b) => clickOn(b, linkPage(f.path)) };
    },
  },
  {
    title: "unknown size (chunked, no Content-Length): SDM takes it",
    make() {
      // Bigger than the others: Firefox waits up to 2 s for a size before it hands an unknown one over.
      const f = server.file("unknown-size.bin", { size: 3 * MIB, rate: 512 * KIB, length: false });
      return { file: f, expect: "sdm", act: (b) => clickOn(b, linkPage(f.path)) };
    },
  },
  {
    title: "one-time link (every request after the first GET is 410): the browser finishes it",
    make() {
      const f = server.file("one-time.bin", { size: 2 * MIB, rate: 512 * KIB, once: true });
      return {
        file: f,
        expect: "browser",
        act: (b) => clickOn(b, linkPage(f.path)),
        check(reqs) {
          for (const r of reqs.sdm) assert.equal(r.status, 410, `SDM's ${r.method} was refused`);
        },
      };
    },
  },
  {
    title: "HTML login page for anything but the browser: the browser keeps its file",
    make() {
      const f = server.file("login-gated.bin", { size: 2 * MIB, rate: 512 * KIB, htmlForOthers: true });
      return { file: f, expect: "browser", act: (b) => clickOn(b, linkPage(f.path)) };
    },
  },
  {
    title: "basic auth (credentials in the link): whoever downloads it, the file is never lost",
    make() {
      const auth = "sdmuser:s3cret";
      const f = server.file("basic-auth.bin", { size: 2 * MIB, rate: RATE, auth });
      const withCreds = f.url("A").replace("http://", `http://${auth}@`);
      return {
        file: f,
        urls: [f.url("A"), withCreds],
        expect: "either",
        act: (b) => clickOn(b, linkPage(withCreds)),
        check(reqs, outcome) {
          const want = `Basic ${Buffer.from(auth).toString("base64")}`;
          const browserAuth = reqs.browser.map((r) => r.headers.authorization ?? "(none)");
          const sdmAuth = reqs.sdm.map((r) => r.headers.authorization ?? "(none)");
          console.log(`#   basic auth: browser sent ${JSON.stringify(browserAuth)}; SDM sent ${JSON.stringify(sdmAuth)}; kept by ${outcome}`);
          if (outcome === "sdm") {
            assert.ok(reqs.sdm.some((r) => r.headers.authorization === want && r.status < 300), "SDM got the file with the credentials");
          }
        },
      };
    },
  },
];

let tokens = 0;
const token = () => `v${Date.now().toString(36)}${(tokens++).toString(36)}`;

/** Open `url` in a new tab and click #dl there. */
async function clickOn(b, url) {
  const page = await b.newPage(url);
  await page.click("#dl");
  return page;
}

for (const kind of KINDS) {
  describe(`capture in ${kind}`, { timeout: 900_000 }, () => {
    let home, sdmDir, browserDir, profile, svc, b;
    let client = null;
    const crashMarker = () => path.join(home, "crash-after-add");

    /** A client for the service, reconnected when the service was restarted (the crash test). */
    async function sdm() {
      if (client && !client.socket.destroyed) return client;
      client = await waitFor("the sdm service", async () => {
        const c = await ServiceClient.connect(home);
        await c.request("ping");
        return c;
      }, { timeoutMs: 30_000 });
      return client;
    }

    before(async () => {
      home = tempDir(`${kind}-home`);
      sdmDir = tempDir(`${kind}-sdm-downloads`);
      browserDir = tempDir(`${kind}-browser-downloads`);
      profile = tempDir(`${kind}-profile`);
      // The fault hook fires only while the marker file exists (the crash test creates it).
      svc = await startService(home, { SDM_TEST_CRASH_AFTER_ADD: crashMarker() });
      client = svc.client;
      await client.request("set_settings", { settings: { download_dir: sdmDir, max_concurrent: 8 } });
      b = await launch(kind, { profile, home, downloadsDir: browserDir });
    });

    after(async () => {
      await b?.close();
      client?.close();
      await svc?.stop();
      await stopServicesOf(home);
    });

    const ctx = () => ({ kind, b, sdm, sdmDir, browserDir });

    test("launches with the extension and reaches the host", async () => {
      await waitFor(`${kind}'s extension to connect to the host`, async () => (await b.hostStatus()).connected, { timeoutMs: 30_000 });
      const { settings } = await (await sdm()).request("get_settings");
      assert.equal(settings.download_dir, sdmDir);
      // The extension page answers through the same API in both browsers.
      const items = await b.evalInExtension((api) => api.downloads.search({}));
      assert.ok(Array.isArray(items));
      if (kind === "firefox" && FIREFOX_XPI) {
        // What made the add-on install as sdm@sdm.dev (browsers.mjs checks the installed id).
        const manifest = JSON.parse(readZip(FIREFOX_XPI).get("manifest.json").toString("utf8"));
        assert.equal(manifest.browser_specific_settings?.gecko?.id, GECKO_ID);
        assert.equal(manifest.key, undefined);
      }
    });

    for (const trigger of TRIGGERS) {
      test(trigger.title, { timeout: 150_000 }, async () => {
        const t = prepare(trigger.make(kind));
        await runTrigger(ctx(), t);
      });
    }

    test("a failed download's file started again in the browser: another size is captured, the same is offered", { timeout: 300_000 }, async () => {
      const c = await sdm();
      const name = `expired-${kind}.bin`;
      const size = 3 * MIB;
      /** The browser's items for `url`. */
      const itemsOf = (url) =>
        b.evalInExtension(
          async (api, u) =>
            (await api.downloads.search({}))
              .filter((i) => i.url === u || i.finalUrl === u)
              .map(({ id, state, paused, filename }) => ({ id, state, paused, filename })),
          url,
        );
      // The extension page of evalInExtension is the popup itself: its rows, and the worker's records in storage.
      const offerShown = (downloadId) =>
        b.evalInExtension((_api, i) => {
          const offer = document.querySelector(`li.row[data-id="${i}"] .offer`);
          return offer && !offer.hidden ? offer.textContent.replace(/\s+/g, " ").trim() : null;
        }, downloadId);
      const offerRecords = () =>
        b.evalInExtension(async (api) =>
          Object.values(await api.storage.local.get(null))
            .filter((r) => r?.offer)
            .map((r) => ({ failedId: r.offer.failedId, url: r.offer.add.url })),
        );
      const answer = (downloadId, what) =>
        b.evalInExtension((_api, [i, w]) => {
          document.querySelector(`li.row[data-id="${i}"] [data-offer="${w}"]`).click();
          return true;
        }, [downloadId, what]);
      const statusOf = async (downloadId) => (await c.list()).find((d) => d.id === downloadId)?.status;

      // SDM has part of the file when its signed link expires: the download fails (410) with its bytes kept.
      const old = server.file(name, { size, rate: 256 * KIB });
      const { id } = await c.request("add", { url: old.url("A"), threads: 1, retries: 0 });
      await c.waitForDownload("some bytes", (d) => d.id === id && d.downloaded >= 256 * KIB, { timeoutMs: 30_000 });
      await c.request("pause", { download_id: id });
      await c.waitForDownload("the pause", (d) => d.id === id && d.status === "paused");
      old.expire();
      await c.request("resume", { download_id: id });
      const failed = await c.waitForDownload("the download to fail at the expired link", (d) => d.id === id && FINAL.has(d.status), { timeoutMs: 30_000 });
      assert.equal(failed.status, "failed", JSON.stringify(failed));
      assert.equal(failed.filename, name);
      assert.ok(failed.downloaded > 0, "the failed download kept its bytes");

      // Another size under the same name: not that file, so an ordinary capture and no offer.
      const resized = server.file(name, { size: 2 * MIB, rate: RATE });
      const pa = await clickOn(b, linkPage(resized.path));
      const taken = await c.waitForDownload("SDM to take the other size as a new download", (d) => d.url === resized.url("A") && FINAL.has(d.status), { timeoutMs: 60_000 });
      assert.equal(taken.status, "completed");
      assert.equal(sha256File(taken.path), resized.sha256);
      await waitFor("the browser's copy of the other size to be erased", async () => (await itemsOf(resized.url("A"))).length === 0);
      assert.deepEqual(await offerRecords(), [], "no offer for a file of another size");
      assert.equal(await offerShown(id), null);
      assert.equal(await statusOf(id), "failed", "the failed download is left alone");
      await pa.close();

      // The same file from a new link behind a cookie: offered on the failed row, nothing handed over yet.
      const started = async (label) => {
        const cookie = `${label}=${token()}`;
        const f = server.file(name, { size, rate: 256 * KIB, cookie });
        const page = await clickOn(b, linkPage(f.path, { cookies: [`${cookie}; Path=/; SameSite=Lax`] }));
        await waitFor(`the popup to offer the address of ${label}`, async () => /use its address/.test((await offerShown(id)) ?? ""), {
          timeoutMs: 30_000,
        }).catch(async (e) => {
          const popup = await b.evalInExtension(() => ({
            rows: [...document.querySelectorAll("li.row")].map((r) => `${r.dataset.id}:${r.dataset.status}`),
            summary: document.querySelector("#summary")?.textContent,
            notice: document.querySelector("#notice")?.textContent,
          }));
          const seen = { popup, records: await offerRecords(), browser: await itemsOf(f.url("A")), sdm: await c.list() };
          throw new Error(`${e.message}\n${JSON.stringify(seen).slice(0, 3000)}`);
        });
        assert.deepEqual(await offerRecords(), [{ failedId: id, url: f.url("A") }]);
        if (kind === "chromium") assert.ok((await itemsOf(f.url("A"))).every((i) => i.paused), "Chromium's copy waits, paused");
        assert.deepEqual(server.requestsFor(f.path).filter((r) => r.who === "sdm"), [], "SDM asked nothing yet");
        return { f, cookie, page };
      };
      const gone = async (f) => {
        await waitFor("the offer to go", async () => (await offerRecords()).length === 0 && (await offerShown(id)) === null);
        await waitFor("the browser's copy to be erased", async () => (await itemsOf(f.url("A"))).length === 0, { timeoutMs: 30_000 });
      };

      // "Download separately": an ordinary capture, a new download; the failed one stays as it was.
      const separate = await started("separate");
      await answer(id, "separate");
      const own = await c.waitForDownload("the separate download", (d) => d.url === separate.f.url("A") && FINAL.has(d.status), { timeoutMs: 90_000 });
      assert.notEqual(own.id, id);
      assert.equal(own.status, "completed");
      assert.equal(sha256File(own.path), separate.f.sha256);
      await gone(separate.f);
      assert.equal(await statusOf(id), "failed");
      await separate.page.close();

      // "Use it": the failed download goes on from its bytes at the new link, with the browser's cookie.
      const use = await started("use");
      await answer(id, "use");
      const done = await c.waitForDownload("the failed download to complete from the new link", (d) => d.id === id && d.status === "completed", { timeoutMs: 90_000 });
      assert.equal(done.url, use.f.url("A"));
      assert.equal(sha256File(done.path), use.f.sha256);
      await gone(use.f);
      const asked = server.requestsFor(use.f.path).filter((r) => r.who === "sdm");
      console.log(`#   ${kind}: "Use it": SDM asked ${asked.map(brief).join(", ")}`);
      assert.ok(asked.some((r) => r.ranged), "SDM fetched the rest");
      for (const r of asked) {
        assert.ok(cookiesOf(r).includes(use.cookie), `SDM's ${brief(r)} carried the browser's cookie`);
        // Only the look at the new link (its first byte alone) may start at byte 0: nothing is fetched again.
        const look = r.method === "GET" && r.headers.range === "bytes=0-0";
        assert.ok(look || !/^bytes=0-/.test(r.headers.range ?? "bytes=0-"), `SDM's ${brief(r)} asked from byte 0`);
      }
      assert.ok(!listDir(browserDir).some((n) => n.startsWith(`expired-${kind}`)), `the browser's folder: ${listDir(browserDir)}`);
      await use.page.close();
    });

    test("two captures of one URL at once: one copy", { timeout: 150_000 }, async () => {
      const f = server.file("twice.bin", { size: 3 * MIB, rate: 256 * KIB });
      const pageUrl = linkPage(f.path);
      const t = prepare({
        file: f,
        expect: "sdm",
        async act(bb) {
          const p1 = await bb.newPage(pageUrl);
          const p2 = await bb.newPage(pageUrl);
          await Promise.all([p1.click("#dl"), p2.click("#dl")]);
          return [p1, p2];
        },
      });
      const { obs } = await runTrigger(ctx(), t);
      assert.equal(obs.sdm.length, 1, `one download in SDM's queue: ${JSON.stringify(obs.sdm)}`);
      const browserGets = server.requestsFor(f.path).filter((r) => r.who === "browser");
      console.log(`#   two captures: the browser made ${browserGets.length} request(s) for it`);
    });

    test("the service dies after saving an add and before replying: one copy, no double", { timeout: 150_000 }, async () => {
      const f = server.file("crash.bin", { size: 2 * MIB, rate: 512 * KIB });
      fs.writeFileSync(crashMarker(), "");
      // Either keeps it: SDM (it saved the add, and the extension's `find` learns so once the service is back), or
      // the browser (Firefox's copy keeps running and may finish first; then SDM drops its own).
      const t = prepare({ file: f, expect: "either", act: (bb) => clickOn(bb, linkPage(f.path)) });
      await runTrigger(ctx(), t, {
        async whileRunning() {
          await waitFor("the service to exit on the fault hook", () => svc.child.exitCode !== null, { timeoutMs: 60_000 }).catch((e) => {
            throw new Error(`${e.message}\nservice log:\n${serviceLog(home)}`);
          });
          assert.equal(svc.child.exitCode, 86, "the fault hook's exit code");
          assert.ok(!fs.existsSync(crashMarker()), "the service removed the marker");
        },
      });
    });

    test("the browser closes mid-capture and opens again with the same profile: one copy", { timeout: 200_000 }, async () => {
      // SDM's first request (its verification) is held for 6 s, so the browser closes while the hand-over is open.
      const f = server.file("reopen.bin", { size: 2 * MIB, rate: 256 * KIB, delayOthersMs: 6_000 });
      const t = prepare({ file: f, expect: "either", act: (bb) => clickOn(bb, linkPage(f.path)) });
      t.before = { sdm: listDir(sdmDir), browser: listDir(browserDir) };
      await t.act(b);
      await waitFor("SDM's verification to reach the server", () => server.requestsFor(f.path).some((r) => r.delayed), {
        timeoutMs: 30_000,
      });
      const during = await browserItems(b, t);
      console.log(`#   browser's item when it closed: ${JSON.stringify(during.map(({ state, paused, bytesReceived }) => ({ state, paused, bytesReceived })))}`);
      if (kind === "chromium") assert.ok(during.some((i) => i.paused), "Chromium's copy was paused for the hand-over");
      await b.close();
      b = await launch(kind, { profile, home, downloadsDir: browserDir });
      await waitFor("the extension to reach the host again", async () => (await b.hostStatus()).connected, { timeoutMs: 30_000 });
      const { outcome, obs } = await settle(ctx(), t, { timeoutMs: 90_000 });
      console.log(`#   ${kind}: ${t.name} after reopening: ${outcome}; requests: ${requestsOf(t).all.map((r) => `${r.who} ${brief(r)}`).join(", ")}`);
      assertOutcome(ctx(), t, outcome, obs);
    });

    test("a private window: the download stays with the browser and SDM learns nothing", { timeout: 150_000 }, async () => {
      const f = server.file("private.bin", { size: 2 * MIB, rate: RATE });
      const t = prepare({
        file: f,
        expect: "browser",
        act: (bb) => bb.openPrivate(f.url("A")),
        check(reqs, _outcome, obs) {
          assert.equal(reqs.sdm.length, 0, "SDM sent no request for it");
          assert.ok(obs.browser.every((i) => i.incognito), "the browser's item is a private one");
        },
      });
      try {
        if (kind === "firefox") {
          await runTrigger(ctx(), t);
          return;
        }
        // Chromium forces "ask where to save" in incognito (DownloadBubbleUIControllerDelegate sets
        // download.prompt_for_download for off-the-record profiles) and headless cancels that dialog, so the
        // browser cannot finish a private download here. What can be shown: the extension, allowed in incognito,
        // left it alone, and SDM learnt nothing of it.
        t.before = { sdm: listDir(sdmDir), browser: listDir(browserDir) };
        await t.act(b);
        const obs = await waitFor("Chromium's private download to end", async () => {
          const o = await observe(ctx(), t);
          return o.browser.length > 0 && o.browser.every((i) => i.state !== "in_progress") ? o : null;
        }, { timeoutMs: 30_000 });
        const reqs = requestsOf(t);
        console.log(`#   chromium private window: ${JSON.stringify(obs.browser.map(({ state, error, incognito }) => ({ state, error, incognito })))} (Chromium's own save-as prompt, cancelled in headless); requests: browser ${reqs.browser.map(brief).join(", ") || "none"}; sdm ${reqs.sdm.map(brief).join(", ") || "none"}`);
        assert.ok(obs.browser.every((i) => i.incognito), "the browser's item is a private one");
        assert.deepEqual(obs.sdm, [], "SDM's queue has no entry for it");
        assert.deepEqual(obs.sdmDirNew, [], "nothing in SDM's folder");
        assert.equal(reqs.sdm.length, 0, "SDM sent no request for it");
        assert.ok(
          obs.browser.every((i) => i.state === "complete" || (i.error === "USER_CANCELED" && i.filename === "")),
          `the item ended by Chromium's save-as prompt (or completed): ${JSON.stringify(obs.browser)}`,
        );
      } finally {
        await b.closePrivateWindows().catch(() => {});
      }
    });

    test("host not installed: the browser keeps the download", { timeout: 150_000 }, async () => {
      const bare = {
        home: tempDir(`${kind}-home-nohost`),
        profile: tempDir(`${kind}-profile-nohost`),
        browserDir: tempDir(`${kind}-browser-downloads-nohost`),
      };
      const nb = await launch(kind, { profile: bare.profile, home: bare.home, downloadsDir: bare.browserDir, host: false });
      try {
        const f = server.file("no-host.bin", { size: 2 * MIB, rate: RATE });
        const t = prepare({
          file: f,
          expect: "browser",
          act: (bb) => clickOn(bb, linkPage(f.path)),
          check(reqs) {
            assert.equal(reqs.sdm.length, 0, "nothing asked SDM");
          },
        });
        await runTrigger({ kind, b: nb, sdm, sdmDir, browserDir: bare.browserDir }, t);
        const status = await nb.hostStatus();
        assert.equal(status.connected, false);
        console.log(`#   no host: the extension says ${JSON.stringify(status.lastError)}`);
      } finally {
        await nb.close();
        await stopServicesOf(bare.home);
      }
    });
  });
}

/** Fill in a trigger's defaults. */
function prepare(t) {
  const name = t.name ?? t.file.name;
  const urls = t.urls ?? [t.file.url("A")];
  return { ...t, name, urls, finalPath: t.file.path };
}

/** The browser's items for a trigger (matched in the extension page: a data: URL is long). */
async function browserItems(b, t) {
  return b.evalInExtension(
    async (api, { urls, name }) => {
      const base = (p) => (p ?? "").split(/[\\/]/).pop();
      const mine = (i) =>
        urls.includes((i.url ?? "").slice(0, 300)) ||
        urls.includes((i.finalUrl ?? "").slice(0, 300)) ||
        base(i.filename) === name;
      return (await api.downloads.search({}))
        .filter(mine)
        .map((i) => ({
          id: i.id,
          url: (i.url ?? "").slice(0, 200),
          finalUrl: (i.finalUrl ?? "").slice(0, 200) || undefined,
          filename: i.filename,
          state: i.state,
          paused: i.paused,
          error: i.error,
          exists: i.exists,
          incognito: i.incognito,
          bytesReceived: i.bytesReceived,
          totalBytes: i.totalBytes,
        }));
    },
    { urls: t.urls.map((u) => u.slice(0, 300)), name: t.name },
  );
}

/** What the browser, SDM and the two folders show for a trigger now. */
async function observe(c, t) {
  const list = await (await c.sdm()).list();
  const sdm = list
    .filter((d) => t.urls.includes(d.url) || (c.sdmDir && path.dirname(d.path) === c.sdmDir && path.basename(d.path) === t.name))
    .map(({ id, url, filename, path: p, status, total, downloaded, error }) => ({ id, url: short(url), filename, path: p, status, total, downloaded, error }));
  const browser = await browserItems(c.b, t);
  const fresh = (dir, before) => listDir(dir).filter((n) => !before.includes(n));
  return {
    sdm,
    browser,
    sdmDirNew: fresh(c.sdmDir, t.before.sdm),
    browserDirNew: fresh(c.browserDir, t.before.browser),
  };
}

/** Where the complete copies are once nothing runs: "sdm", "browser", "both" or "none"; null while something still
 * runs. `provisional` when the state may still change: a partial file is left, nothing was seen yet (or the download
 * is lost), or SDM has it and the browser's item is still listed. */
function classify(obs) {
  if (obs.sdm.some((d) => !FINAL.has(d.status))) return null;
  if (obs.browser.some((i) => i.state === "in_progress")) return null;
  const inSdm = obs.sdm.some((d) => d.status === "completed");
  const inBrowser = obs.browser.some((i) => i.state === "complete");
  const outcome = inSdm && inBrowser ? "both" : inSdm ? "sdm" : inBrowser ? "browser" : "none";
  const partial = [...obs.sdmDirNew, ...obs.browserDirNew].some((n) => PARTIAL.test(n));
  const provisional = partial || outcome === "none" || (outcome === "sdm" && obs.browser.length > 0);
  return { outcome, provisional };
}

/** Wait until the trigger's download has settled (see classify); a provisional state gets 10 s to change (20 s when
 * nothing at all was seen yet) before it counts. */
async function settle(c, t, { timeoutMs = 90_000 } = {}) {
  const deadline = Date.now() + timeoutMs;
  let since = null;
  let last = null;
  for (;;) {
    const obs = await observe(c, t);
    const state = classify(obs);
    if (state && !state.provisional) return { outcome: state.outcome, obs };
    const key = state ? state.outcome : null;
    if (key !== last) since = Date.now();
    last = key;
    const nothing = !obs.browser.length && !obs.sdm.length;
    if (state && Date.now() - since > (nothing ? 20_000 : 10_000)) return { outcome: state.outcome, obs };
    if (Date.now() > deadline) return { outcome: state?.outcome ?? "unsettled", obs };
    await sleep(250);
  }
}

/** The requests for the trigger's file (its final path), split by who sent them. A request whose client had gone
 * before the server looked it up (a service killed mid-request) counts as SDM's when it was ranged or a HEAD, which
 * the browsers' first requests never are. */
function requestsOf(t) {
  const all = server.requestsFor(t.finalPath);
  const sdmLike = (r) => r.who === "sdm" || (r.who === "other" && (r.ranged || r.method === "HEAD"));
  return {
    all,
    sdm: all.filter(sdmLike),
    browser: all.filter((r) => r.who === "browser"),
    other: all.filter((r) => r.who !== "browser" && !sdmLike(r)),
  };
}

const show = (obs) => JSON.stringify(obs, null, 1).slice(0, 3000);

/** Run one trigger: start it, wait for it to settle, assert the one copy, the lists and the credentials. */
async function runTrigger(c, t, { whileRunning } = {}) {
  t.before = { sdm: listDir(c.sdmDir), browser: listDir(c.browserDir) };
  const opened = await t.act(c.b);
  if (whileRunning) await whileRunning();
  const { outcome, obs } = await settle(c, t);
  try {
    const reqs = requestsOf(t);
    console.log(
      `#   ${c.kind}: ${t.name}: ${outcome}; requests: browser ${reqs.browser.map(brief).join(", ") || "none"}; sdm ${reqs.sdm.map(brief).join(", ") || "none"}${reqs.other.length ? `; other ${reqs.other.map(brief).join(", ")}` : ""}`,
    );
    assertOutcome(c, t, outcome, obs);
    assertCredentials(t, reqs, outcome);
    t.check?.(reqs, outcome, obs);
    return { outcome, obs, reqs };
  } finally {
    for (const p of [opened].flat()) await p?.close?.();
  }
}

/** One request in a line: method, range, status, and the names of the cookies and credentials it carried. */
const brief = (r) => {
  const carried = cookiesOf(r).map((c) => c.split("=")[0]);
  if (r.headers.authorization) carried.push("Authorization");
  return `${r.method}${r.ranged ? `[${r.headers.range}]` : ""}→${r.status}${carried.length ? ` (${carried.join(", ")})` : ""}${r.who === "other" ? " (client gone)" : ""}`;
};

/** Exactly one exact copy where it belongs, nothing in the other folder, and the lists to match. */
function assertOutcome(c, t, outcome, obs) {
  const want = t.expect === "either" ? ["sdm", "browser"] : [t.expect];
  assert.ok(want.includes(outcome), `expected the file ${t.expect === "either" ? "in one place" : `with ${t.expect}`}, got "${outcome}":\n${show(obs)}`);
  if (outcome === "sdm") {
    const done = obs.sdm.filter((d) => d.status === "completed");
    assert.equal(obs.sdm.length, 1, `one entry in SDM's queue:\n${show(obs)}`);
    assert.equal(path.dirname(done[0].path), c.sdmDir, "SDM saved it in its download_dir");
    assert.equal(path.basename(done[0].path), t.name, `SDM named it as the browser did:\n${show(obs)}`);
    assert.equal(sha256File(done[0].path), t.file.sha256, "SDM's copy is exact");
    assert.deepEqual(obs.sdmDirNew, [t.name], "exactly one new file in SDM's folder");
    assert.deepEqual(obs.browserDirNew, [], `nothing in the browser's folder:\n${show(obs)}`);
    assert.deepEqual(obs.browser, [], `the browser's copy is erased from its list:\n${show(obs)}`);
  } else {
    const done = obs.browser.filter((i) => i.state === "complete");
    assert.equal(done.length, 1, `one complete item in the browser's list:\n${show(obs)}`);
    assert.equal(path.dirname(done[0].filename), c.browserDir, "the browser saved it in its own folder");
    assert.equal(path.basename(done[0].filename), t.name, "under the expected name");
    assert.equal(sha256File(done[0].filename), t.file.sha256, "the browser's copy is exact");
    assert.deepEqual(obs.browserDirNew, [t.name], "exactly one new file in the browser's folder");
    assert.deepEqual(obs.sdmDirNew, [], `nothing in SDM's folder:\n${show(obs)}`);
    assert.deepEqual(obs.sdm, [], `SDM's queue has no entry for it:\n${show(obs)}`);
  }
}

/** When SDM took it, each of SDM's requests for the file carried exactly the browser's Cookie, Authorization,
 * Referer and User-Agent (those of the browser's request that got the file). */
function assertCredentials(t, reqs, outcome) {
  if (outcome !== "sdm") return;
  assert.ok(reqs.sdm.length > 0, "the request log shows SDM's requests");
  const ok = reqs.browser.filter((r) => r.status >= 200 && r.status < 300);
  const mine = ok.at(-1) ?? reqs.browser.at(-1);
  assert.ok(mine, "the request log shows the browser's request");
  for (const r of reqs.sdm) {
    const what = `SDM's ${brief(r)}`;
    assert.equal(sortedCookies(r), sortedCookies(mine), `${what}: the browser's cookies`);
    assert.equal(r.headers.authorization, mine.headers.authorization, `${what}: the browser's Authorization`);
    assert.equal(r.headers.referer, mine.headers.referer, `${what}: the browser's Referer`);
    assert.equal(r.headers["user-agent"], mine.headers["user-agent"], `${what}: the browser's User-Agent`);
  }
}
