// End to end: Debian's Chromium with the extension (the store zip of `cargo xtask dist` unpacked, or the unpacked
// build target/extension when $SDM_CHROME_ZIP is unset), the real `sdm` host registered for the test profile, a real
// service with its own SDM_HOME, and files served from 127.0.0.1. Each test checks the downloaded file's sha256.

import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, before, describe, test } from "node:test";

import {
  CHROME_ZIP,
  content,
  DEV_EXTENSION_ID,
  EXTENSION_DIR,
  EXTENSION_ID,
  launchBrowser,
  openPopup,
  record,
  registerHost,
  ROOT,
  serviceLog,
  ServiceClient,
  sha256,
  sha256File,
  startFileServer,
  startService,
  startStack,
  stopServicesOf,
  tempDir,
  waitFor,
} from "./support.mjs";

const MIB = 1024 * 1024;
const KIB = 1024;

/** The service's record of a download from `url`, once `pred` holds for it. */
function downloadOf(client, url, what, pred = () => true, opts) {
  return client.waitForDownload(what, (d) => d.url === url && pred(d), opts);
}

async function assertFileIs(download, name, size) {
  assert.ok(fs.existsSync(download.path), `${download.path} exists`);
  assert.equal(sha256File(download.path), sha256(content(name, size)), `sha256 of ${download.path}`);
}

/** The browser's own record of downloads of `url`, read in the extension's worker. */
const browserDownloads = (worker, url) =>
  worker.evaluate(async (u) => chrome.downloads.search({ url: u }), url);

describe("with the host registered and the service running", { timeout: 300_000 }, () => {
  let files, home, downloads, profile, svc, client, browser;

  let stack;

  before(async () => {
    stack = await startStack();
    ({ files, home, downloads, profile, svc, client, browser } = stack);
  });

  after(async () => {
    await stack?.close();
  });

  test("the extension loads with the id the host allows and its worker reaches the host", async () => {
    // The id read from the browser's service worker: the one support.mjs computed from the folder and registered
    // the host for, when the store zip (no `key`) is loaded; the pinned one for the unpacked build.
    assert.equal(browser.id, EXTENSION_ID);
    if (CHROME_ZIP) {
      const manifest = JSON.parse(fs.readFileSync(path.join(EXTENSION_DIR, "manifest.json"), "utf8"));
      assert.equal(manifest.key, undefined, "the store package has no `key`");
      assert.notEqual(browser.id, DEV_EXTENSION_ID);
    }
    await waitFor("the worker's native port", () => browser.worker.evaluate(() => self.sdmHostStatus().connected));
    // update() fails for a menu item that does not exist.
    await waitFor("the context menu item", () =>
      browser.worker.evaluate(() => chrome.contextMenus.update("download-with-sdm", {}).then(() => true)),
    );
  });

  test("popup: add, pause, resume, complete at 100%, remove; history keeps it", { timeout: 120_000 }, async () => {
    const name = "popup-a.bin";
    const size = 3 * MIB;
    // Two connections at 384 KiB/s each: about four seconds, long enough to pause while it runs.
    const url = files.url("files", name, size, 384 * KIB);
    const page = await openPopup(browser.context, browser.id);
    await page.locator("#offline").waitFor({ state: "hidden" });
    await waitFor("the popup to connect", async () => (await page.textContent("#summary")) !== "connecting…");

    await page.getByLabel("Address to download").fill(url);
    await page.locator("summary", { hasText: "Options" }).click();
    await page.getByLabel("Connections").fill("2");
    await page.getByLabel("Address to download").press("Enter");

    const row = page.locator("li.row", { hasText: name });
    await row.and(page.locator('[data-status="downloading"]')).waitFor({ timeout: 15_000 });
    await row.getByRole("button", { name: "Pause", exact: true }).click();
    await row.and(page.locator('[data-status="paused"]')).waitFor({ timeout: 10_000 });
    const paused = await downloadOf(client, url, "the service to pause it", (d) => d.status === "paused");
    assert.ok(paused.downloaded < size, "paused before the end");

    await row.getByRole("button", { name: "Resume", exact: true }).click();
    await row.and(page.locator('[data-status="completed"]')).waitFor({ timeout: 60_000 });
    assert.equal((await row.locator(".pct").textContent()).trim(), "100%");
    const done = await downloadOf(client, url, "completion", (d) => d.status === "completed");
    assert.equal(done.threads, 2);
    await assertFileIs(done, name, size);

    await row.getByRole("button", { name: "Remove", exact: true }).click();
    await row.waitFor({ state: "detached", timeout: 10_000 });
    await page.getByRole("tab", { name: "History" }).click();
    await page.locator("#history li", { hasText: name }).waitFor({ timeout: 10_000 });
    await page.getByRole("button", { name: "Clear", exact: true }).click();
    await page.locator("#history-empty").waitFor({ timeout: 10_000 });
    assert.equal((await client.request("history", {})).total, 0);
    await page.close();
  });

  test("a cookie-protected link is captured: SDM downloads it, the browser's copy is cancelled and erased", async () => {
    const name = "cookie-b.bin";
    const size = 2 * MIB;
    const pageUrl = files.url("page", name, size, 512 * KIB);
    const fileUrl = files.url("protected", name, size, 512 * KIB);
    const page = await browser.context.newPage();
    await page.goto(pageUrl);
    await page.click("#dl");

    const done = await downloadOf(client, fileUrl, "SDM to complete the captured download", (d) => d.status === "completed", {
      timeoutMs: 60_000,
    });
    await assertFileIs(done, name, size);
    const fromSdm = files.requests.filter(
      (r) => r.path === `/protected/${name}` && (r.headers.cookie ?? "").includes(files.token) && r.headers.range,
    );
    assert.ok(fromSdm.length > 0, "SDM's ranged requests carried the page's cookie");
    await waitFor("the browser's own download to be erased", async () => (await browserDownloads(browser.worker, fileUrl)).length === 0, {
      timeoutMs: 15_000,
    });
    await page.close();
  });

  test("the context menu handler downloads a link with the page as referrer", async () => {
    const name = "menu-c.bin";
    const size = MIB + 12345;
    const pageUrl = files.url("menu", name, size);
    const linkUrl = files.url("files", name, size);
    const page = await browser.context.newPage();
    await page.goto(pageUrl);
    const added = await browser.worker.evaluate(
      ({ linkUrl, pageUrl }) =>
        self.onContextMenuClick({ menuItemId: "download-with-sdm", linkUrl, pageUrl }, { id: 1, url: pageUrl }),
      { linkUrl, pageUrl },
    );
    assert.equal(typeof added.id, "number");
    const done = await downloadOf(client, linkUrl, "the menu download", (d) => d.status === "completed");
    assert.equal(done.id, added.id);
    await assertFileIs(done, name, size);
    const referers = files.requests.filter((r) => r.path === `/files/${name}`).map((r) => r.headers.referer);
    assert.ok(referers.length > 0 && referers.every((r) => r === pageUrl), `referers: ${referers}`);
    await page.close();
  });

  test("settings saved in the popup reach the host, and capture off leaves downloads to the browser", async () => {
    const page = await openPopup(browser.context, browser.id);
    // Keyboard only: arrow keys move between the tabs.
    await page.getByRole("tab", { name: "Downloads" }).focus();
    await page.keyboard.press("ArrowRight");
    await page.keyboard.press("ArrowRight");
    const settingsTab = page.getByRole("tab", { name: "Settings" });
    assert.equal(await settingsTab.getAttribute("aria-selected"), "true");
    assert.equal(await settingsTab.evaluate((el) => el === document.activeElement), true);
    await page.getByRole("tabpanel", { name: "Settings" }).waitFor();
    const capture = page.getByLabel("Take over the browser's downloads");
    await waitFor("the settings form to fill", async () => (await page.inputValue("#set-dir")) === downloads);
    assert.equal(await capture.isChecked(), true);
    await capture.uncheck();
    await page.getByLabel("Leave these sites to the browser (one per line)").fill("example.org");
    await page.getByRole("button", { name: "Save", exact: true }).click();
    await page.getByText("Settings saved").waitFor({ timeout: 10_000 });
    const { settings } = await client.request("get_settings");
    assert.equal(settings.capture_enabled, false);
    assert.deepEqual(settings.capture_exclude, ["example.org"]);
    assert.equal(settings.download_dir, downloads);

    // The worker hears the `settings` event; the next download stays with the browser.
    const name = "nocapture-f.bin";
    const size = 2 * MIB;
    const fileUrl = files.url("protected", name, size, 1024 * KIB);
    const tab = await browser.context.newPage();
    await tab.goto(files.url("page", name, size, 1024 * KIB));
    await tab.click("#dl");
    const item = await waitFor(
      "the browser to complete the download itself",
      async () => (await browserDownloads(browser.worker, fileUrl)).find((d) => d.state === "complete"),
      { timeoutMs: 30_000 },
    );
    assert.equal(sha256File(item.filename), sha256(content(name, size)));
    assert.equal((await client.list()).filter((d) => d.url === fileUrl).length, 0, "SDM was not asked");

    await capture.check();
    await page.getByRole("button", { name: "Save", exact: true }).click();
    await waitFor("capture back on", async () => (await client.request("get_settings")).settings.capture_enabled);
    await tab.close();
    await page.close();
  });

  test("screenshot with downloads in flight, and 1,000 rows", { timeout: 180_000 }, async () => {
    for (const [name, rate] of [["ubuntu-24.04-desktop-amd64.iso", 300 * KIB], ["dataset-2025.tar.zst", 120 * KIB], ["talk-recording.mkv", 60 * KIB]]) {
      await client.request("add", { url: files.url("files", name, 8 * MIB, rate), threads: 4 });
    }
    const page = await openPopup(browser.context, browser.id);
    // The toolbar popup's size (body is 440 px wide, at most 590 px tall), in the default dark theme.
    await page.setViewportSize({ width: 440, height: 600 });
    await page.emulateMedia({ colorScheme: "dark" });
    await waitFor("three rows with progress", async () => (await page.locator('li.row[data-status="downloading"] .speed:not(:empty)').count()) >= 3, {
      timeoutMs: 20_000,
    });
    const running = (await client.list()).filter((d) => d.status === "downloading").length;
    await waitFor(`the badge to count ${running} downloads`, async () =>
      (await browser.worker.evaluate(() => chrome.action.getBadgeText({}))) === String(running),
    );
    // Into target/ by default, so a test run leaves the tree clean; SDM_SCREENSHOT=docs/popup.png refreshes README's.
    const shot = path.resolve(ROOT, process.env.SDM_SCREENSHOT || "target/popup.png");
    fs.mkdirSync(path.dirname(shot), { recursive: true });
    await page.screenshot({ path: shot });
    await page.close();

    // 1,000 queued downloads behind one slow one, then time the popup from opening to its first and last row.
    await client.request("set_settings", { settings: { max_concurrent: 1 } });
    const slow = (i) => files.url("files", `queued-${i}.bin`, MIB, 1000);
    const t0 = Date.now();
    for (let i = 0; i < 1000; i += 50) {
      await Promise.all(Array.from({ length: 50 }, (_, j) => client.request("add", { url: slow(i + j) })));
    }
    record(`adding 1,000 downloads through the service socket: ${Date.now() - t0} ms`);
    const total = (await client.request("list", { limit: 1 })).total;
    assert.ok(total >= 1000, `total ${total}`);

    const popup = await browser.context.newPage();
    const opened = Date.now();
    await popup.goto(`chrome-extension://${browser.id}/popup.html`);
    await popup.locator("li.row").first().waitFor({ timeout: 30_000 });
    const firstRow = Date.now() - opened;
    await waitFor("every row", async () => (await popup.locator("li.row").count()) >= total, { timeoutMs: 30_000 });
    const allRows = Date.now() - opened;
    const [started, mark, build] = await popup.evaluate(() => [
      performance.getEntriesByName("sdm-start")[0]?.startTime ?? null,
      performance.getEntriesByName("sdm-first-row")[0]?.startTime ?? null,
      // The longest single rebuild of the list (a later page of `list` rebuilds nothing, it appends).
      Math.max(0, ...performance.getEntriesByName("sdm-rows").map((e) => e.duration)),
    ]);
    assert.notEqual(mark, null, "the popup marks its first row");
    record(
      `popup with ${total} downloads: first row on screen ${firstRow} ms after opening (in-page: wasm running at ${Math.round(started)} ms, first row at ${Math.round(mark)} ms after navigation), all rows ${allRows} ms; building the rows took ${Math.round(build)} ms in one task`,
    );
    await popup.close();
  });
});

describe("without the host registered", { timeout: 120_000 }, () => {
  let files, home, profile, browser;

  before(async () => {
    files = await startFileServer();
    home = tempDir("home-nohost");
    profile = tempDir("profile-nohost");
    browser = await launchBrowser({ userDataDir: profile, home });
  });

  after(async () => {
    await browser?.context.close().catch(() => {});
    await files?.close();
  });

  test("a captured download goes back to the browser, which completes it", async () => {
    const name = "nohost-d.bin";
    const size = 2 * MIB;
    const fileUrl = files.url("protected", name, size, 1024 * KIB);
    const page = await browser.context.newPage();
    await page.goto(files.url("page", name, size, 1024 * KIB));
    await page.click("#dl");
    const item = await waitFor(
      "the browser to complete the download",
      async () => (await browserDownloads(browser.worker, fileUrl)).find((d) => d.state === "complete"),
      { timeoutMs: 30_000 },
    );
    assert.equal(sha256File(item.filename), sha256(content(name, size)));
    const status = await browser.worker.evaluate(() => self.sdmHostStatus());
    assert.equal(status.connected, false);
    assert.match(status.lastError ?? "", /native messaging host/i);
    await page.close();
  });

  test("the popup says how to install the host", async () => {
    const page = await openPopup(browser.context, browser.id);
    const alert = page.getByRole("alert");
    await alert.waitFor({ timeout: 10_000 });
    assert.match(await alert.textContent(), /sdm install/);
    await page.close();
  });
});

describe("closing the browser mid-download", { timeout: 120_000 }, () => {
  let files, home, downloads, profile, client;

  before(async () => {
    files = await startFileServer();
    home = tempDir("home-close");
    downloads = tempDir("downloads-close");
    profile = tempDir("profile-close");
    registerHost(profile);
  });

  after(async () => {
    client?.close();
    await stopServicesOf(home);
    await files?.close();
  });

  test("the service the browser started finishes the file", async () => {
    const name = "close-e.bin";
    const size = 3 * MIB;
    const url = files.url("files", name, size, 256 * KIB);
    const browser = await launchBrowser({ userDataDir: profile, home });
    // The worker's port starts the relay, which starts the service detached (nothing else started one here).
    client = await waitFor("the service started by the browser", async () => {
      const c = await ServiceClient.connect(home);
      await c.request("ping");
      return c;
    }, { timeoutMs: 20_000 });
    await client.request("set_settings", { settings: { download_dir: downloads } });
    const page = await openPopup(browser.context, browser.id);
    await page.getByLabel("Address to download").fill(url);
    await page.getByRole("button", { name: "Download", exact: true }).click();
    await downloadOf(client, url, "the download to be under way", (d) => d.status === "downloading" && d.downloaded > 0, {
      timeoutMs: 15_000,
    });
    await browser.context.close();

    const done = await downloadOf(client, url, "the service to finish after the browser closed", (d) => d.status === "completed", {
      timeoutMs: 60_000,
    }).catch((e) => {
      throw new Error(`${e.message}\nservice log:\n${serviceLog(home)}`);
    });
    await assertFileIs(done, name, size);
  });
});
