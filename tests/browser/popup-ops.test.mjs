// Issue 19 in the popup: the header's Pause all, Resume all and Clear finished, against the real extension, the real
// `sdm` host and a real service, used with the mouse and with the keyboard alone.

import assert from "node:assert/strict";
import fs from "node:fs";
import { createRequire } from "node:module";
import { after, before, describe, test } from "node:test";

import { openPopup, startStack, waitFor } from "./support.mjs";

const MIB = 1024 * 1024;
const KIB = 1024;

/** Wait until the popup's notice matches `re` (it is set when the reply arrives, after the service acted). */
const noticeSays = (page, re) =>
  waitFor(`the notice ${re}`, async () => re.test((await page.textContent("#notice")) ?? ""), { timeoutMs: 10_000 });

/** axe-core's script, evaluated in the page over the debugging protocol (the extension's CSP refuses inline scripts). */
const AXE = fs.readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

/** axe-core's serious and critical findings on the page as it is shown now, one line each. */
async function accessibilityFindings(page) {
  if (!(await page.evaluate(() => typeof window.axe === "object"))) await page.evaluate(AXE);
  const violations = await page.evaluate(async () => (await window.axe.run(document)).violations);
  return violations
    .filter((v) => v.impact === "serious" || v.impact === "critical")
    .map((v) => `${v.impact} ${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(" ")).join(", ")})`);
}

describe("popup: commands on the whole queue", { timeout: 180_000 }, () => {
  let files, home, downloads, profile, svc, client, browser;

  let stack;

  before(async () => {
    stack = await startStack();
    ({ files, home, downloads, profile, svc, client, browser } = stack);
  });

  after(async () => {
    await stack?.close();
  });

  /** The statuses of the downloads of `urls`, as the service has them. */
  const statuses = async (urls) => {
    const all = await client.list();
    return urls.map((u) => all.find((d) => d.url === u)?.status);
  };

  test("Pause all, Resume all and Clear finished act on every row, by mouse and by keyboard", async () => {
    // Slow enough (128 KiB/s) to be caught running; two of them, and one that finishes at once.
    const slow = ["ops-a.bin", "ops-b.bin"].map((n) => files.url("files", n, 8 * MIB, 128 * KIB));
    const quick = files.url("files", "ops-done.bin", 64 * KIB);
    for (const url of [...slow, quick]) await client.request("add", { url, threads: 1 });
    await client.waitForDownload("the quick one to complete", (d) => d.url === quick && d.status === "completed");

    const page = await openPopup(browser.context, browser.id);
    await page.locator("#offline").waitFor({ state: "hidden" });
    await waitFor("three rows", async () => (await page.locator("li.row").count()) === 3);

    await page.getByRole("button", { name: "Pause all" }).click();
    await waitFor("both paused", async () => (await statuses(slow)).every((s) => s === "paused"));
    await page.locator('li.row[data-status="paused"]').nth(1).waitFor({ timeout: 10_000 });
    await noticeSays(page, /Paused 2 downloads/);

    // The keyboard alone: Tab reaches the button, Enter presses it.
    await page.getByRole("button", { name: "Pause all" }).focus();
    await page.keyboard.press("Tab");
    assert.equal(await page.evaluate(() => document.activeElement?.id), "resume-all");
    await page.keyboard.press("Enter");
    await waitFor("both running again", async () =>
      (await statuses(slow)).every((s) => s === "downloading" || s === "queued"),
    );
    await noticeSays(page, /Resumed 2 downloads/);

    await page.keyboard.press("Tab");
    assert.equal(await page.evaluate(() => document.activeElement?.id), "clear-finished");
    await page.keyboard.press(" ");
    await waitFor("the completed row to leave", async () => (await page.locator("li.row").count()) === 2);
    await noticeSays(page, /Cleared 1 download\b/);
    const listed = (await client.list()).map((d) => d.url).sort();
    assert.deepEqual(listed, [...slow].sort());
    const history = await client.request("history", {});
    assert.ok(history.items.some((h) => h.url === quick), "history keeps the cleared download");

    for (const url of slow) {
      const d = (await client.list()).find((x) => x.url === url);
      await client.request("cancel", { download_id: d.id });
    }
    await page.close();
  });

  test("a row's menu: refresh the address (Start over after a conflict), speed cap and connections, move", async () => {
    await client.request("set_settings", { settings: { max_concurrent: 1 } });
    const size = 8 * MIB;
    const url = files.url("files", "menu-a.bin", size, 128 * KIB);
    const waiting = files.url("files", "menu-b.bin", size, 128 * KIB);
    const { id } = await client.request("add", { url, threads: 1 });
    const { id: second } = await client.request("add", { url: waiting, threads: 1 });
    await client.waitForDownload("some bytes", (d) => d.id === id && d.downloaded > 0);
    await client.request("pause", { download_id: id });

    const page = await openPopup(browser.context, browser.id);
    await page.locator("#offline").waitFor({ state: "hidden" });
    const row = page.locator(`li.row[data-id="${id}"]`);
    await row.and(page.locator('[data-status="paused"]')).waitFor({ timeout: 10_000 });

    // Keyboard only: the menu opens with Enter, the address is typed, the button is pressed with Enter.
    await row.locator("summary").focus();
    await page.keyboard.press("Enter");
    await page.keyboard.press("Tab");
    await page.keyboard.type(`${url}&mirror=1`);
    await page.keyboard.press("Tab");
    await page.keyboard.press("Enter");
    await noticeSays(page, /New address set; the bytes already down are kept/);
    const kept = await client.waitForDownload("the new address", (d) => d.id === id && d.url === `${url}&mirror=1`);
    assert.ok(kept.downloaded > 0, "the bytes already down are kept");

    // Another file (another size) is refused; Start over takes it.
    const other = files.url("files", "menu-a.bin", size / 2);
    await row.getByLabel("New address").fill(other);
    await row.getByRole("button", { name: "Refresh address…" }).click();
    await noticeSays(page, /Start over/);
    const restart = row.getByRole("button", { name: "Start over" });
    await restart.waitFor({ state: "visible" });
    assert.equal(await page.evaluate(() => document.activeElement?.textContent), "Start over");
    assert.equal((await client.list()).find((d) => d.id === id).url, `${url}&mirror=1`, "nothing changed yet");
    await page.keyboard.press(" ");
    await noticeSays(page, /starting over/);
    await restart.waitFor({ state: "hidden" });
    const restarted = await client.waitForDownload("the other file", (d) => d.id === id && d.url === other);
    assert.equal(restarted.downloaded, 0);

    await row.getByLabel("Speed cap, KiB/s (0 = none)").fill("64");
    await row.getByLabel("Connections").fill("2");
    await row.getByRole("button", { name: "Apply" }).click();
    await noticeSays(page, /Changed/);
    const changed = (await client.list()).find((d) => d.id === id);
    assert.equal(changed.bandwidth_limit, 64 * KIB);
    assert.equal(changed.threads, 2);

    const order = async () => (await client.list()).map((d) => d.id);
    // The rows of downloads that may still go on, top to bottom, as the popup shows them.
    const shownOrder = () =>
      page
        .locator('li.row:not([data-status="completed"]):not([data-status="failed"]):not([data-status="cancelled"])')
        .evaluateAll((rows) => rows.map((r) => Number(r.dataset.id)));
    assert.deepEqual((await order()).slice(-2), [id, second]);
    assert.deepEqual(await shownOrder(), [id, second], "rows follow the queue, not newest first");
    const secondRow = page.locator(`li.row[data-id="${second}"]`);
    await secondRow.locator("summary").click();
    await secondRow.getByRole("button", { name: "Move to top" }).click();
    await noticeSays(page, /Moved in the queue/);
    assert.equal((await order())[0], second);
    assert.deepEqual(await shownOrder(), [second, id], "the row moved to the top");
    // The menu stays open and its button keeps the focus, so the keyboard can go on moving the row.
    assert.equal(await page.evaluate(() => document.activeElement?.textContent), "Move to top");
    await page.keyboard.press("Tab");
    await page.keyboard.press("Tab");
    await page.keyboard.press("Enter");
    // Down passes over the cancelled downloads of the test before, which wait for nothing.
    await waitFor("the move down", async () => (await order()).indexOf(second) > (await order()).indexOf(id));
    await waitFor("the row to move down", async () => JSON.stringify(await shownOrder()) === JSON.stringify([id, second]));

    await client.request("pause_all");
    await page.close();
  });

  test("notifications of finished downloads can be turned off in the settings, and on again", async () => {
    const notified = async (id) =>
      Object.keys(await browser.worker.evaluate(() => chrome.notifications.getAll())).includes(`sdm-${id}`);
    const page = await openPopup(browser.context, browser.id);
    await page.locator("#offline").waitFor({ state: "hidden" });
    await page.getByRole("tab", { name: "Settings" }).click();
    const box = page.getByLabel(/Notify me when a download completes or fails/);
    await waitFor("the stored setting to load", async () => (await box.isChecked()) === true);

    await box.focus();
    await page.keyboard.press(" ");
    await noticeSays(page, /Notifications off/);
    assert.equal(await browser.worker.evaluate(async () => (await chrome.storage.local.get("sdm-notify"))["sdm-notify"]), false);
    const off = await client.request("add", { url: files.url("files", "quiet.bin", 64 * KIB) });
    await client.waitForDownload("the quiet one", (d) => d.id === off.id && d.status === "completed");
    // The worker has had the `state` event when the next download's notification shows, so one second is plenty.
    await page.keyboard.press(" ");
    await noticeSays(page, /Notifications on/);
    const on = await client.request("add", { url: files.url("files", "loud.bin", 64 * KIB) });
    await waitFor("the notification of the second download", () => notified(on.id), { timeoutMs: 15_000 });
    assert.equal(await notified(off.id), false, "a download finished while notifications were off notified");

    // A fresh popup shows what is stored.
    await page.keyboard.press(" ");
    await noticeSays(page, /Notifications off/);
    const again = await openPopup(browser.context, browser.id);
    await again.getByRole("tab", { name: "Settings" }).click();
    await waitFor("the stored setting in a new popup", async () =>
      (await again.getByLabel(/Notify me when a download completes or fails/).isChecked()) === false,
    );
    await again.close();
    await page.close();
  });

  test("every tab of the popup passes axe-core with no serious or critical finding", async () => {
    const { id } = await client.request("add", { url: files.url("files", "axe-row.bin", 8 * MIB, 64 * KIB), threads: 1 });
    // The worker's record of an offer for that row (as capture.js writes it), so the offer is checked too.
    const offer = { key: "axe-offer", offer: { failedId: id, name: "axe-row.bin", add: { url: "http://127.0.0.1:9/x" } } };
    await browser.worker.evaluate((o) => chrome.storage.local.set({ "capture/axe-offer": o }), offer);
    const page = await openPopup(browser.context, browser.id);
    await page.locator("#offline").waitFor({ state: "hidden" });
    await page.locator("li.row").first().waitFor({ timeout: 10_000 });
    await page.locator(`li.row[data-id="${id}"] .offer`).getByRole("button", { name: "Use it" }).waitFor({ timeout: 10_000 });
    // With a row's menu open, so its fields and buttons are checked too.
    await page.locator('li.row:not([data-status="completed"]):not([data-status="cancelled"]) summary').first().click();
    for (const tab of ["Downloads", "History", "Settings"]) {
      await page.getByRole("tab", { name: tab }).click();
      await page.locator(`#panel-${tab.toLowerCase()}`).waitFor({ state: "visible" });
      const findings = await accessibilityFindings(page);
      assert.deepEqual(findings, [], `${tab} tab`);
    }
    await browser.worker.evaluate(() => chrome.storage.local.remove("capture/axe-offer"));
    await page.getByRole("tab", { name: "Downloads" }).click();
    await page.locator(`li.row[data-id="${id}"] .offer`).waitFor({ state: "hidden", timeout: 10_000 });
    await client.request("pause_all");
    await page.close();
  });
});
