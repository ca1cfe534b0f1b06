// One interface over the two browsers the extension ships for: Debian's Chromium (playwright-core, CDP) and Debian's
// Firefox ESR (puppeteer-core, WebDriver BiDi). Both run headless with the extension's store package
// ($SDM_CHROME_ZIP unpacked, $SDM_FIREFOX_XPI; the unpacked build in $SDM_EXTENSION_DIR when unset), a fresh
// profile, the host registered for that profile only (unless `host: false`), SDM_HOME in their environment (passed on
// to the host they start), and their own download folder set to `downloadsDir`, where files land under the names the
// browser chose.
//
//   const b = await launch("firefox", { profile, home, downloadsDir });
//   const page = await b.newPage(url); await page.click("#dl");
//   const items = await b.evalInExtension((api, url) => api.downloads.search({ url }), url);
//   await b.close();
//
// `evalInExtension(fn, arg)` runs `fn(api, arg)` in an extension page (a tab on popup.html), where `api` is `chrome`
// in Chromium and `browser` in Firefox; `arg` and the result travel as JSON.

import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { chromium } from "playwright-core";
import puppeteer from "puppeteer-core";

import { chromiumOptions, EXTENSION_ID, FIREFOX_EXTENSION, registerHost, SDM_BIN, sleep, waitFor } from "./support.mjs";

export const FIREFOX = process.env.FIREFOX ?? "/usr/bin/firefox-esr";
/** Both, always; `SDM_BROWSERS=firefox` narrows a run by hand while looking at one browser. */
export const KINDS = process.env.SDM_BROWSERS ? process.env.SDM_BROWSERS.split(",") : ["chromium", "firefox"];
/** The add-on id from manifest.json's browser_specific_settings, and the internal UUID this suite pins for it. */
export const GECKO_ID = "sdm@sdm.dev";
export const FIREFOX_UUID = "3f0c8e52-7a4b-4d6e-9c1a-5b2e8d7f6a10";

/** Launch `kind` ("chromium" or "firefox"). Options: profile (a folder, reused to reopen the same profile), home
 * (SDM_HOME), downloadsDir (the browser's own download folder), host (register the host: default true), env (more
 * environment for the browser and so for the host), args (more command-line arguments for Chromium). */
export async function launch(kind, opts) {
  if (kind === "chromium") return launchChromium(opts);
  if (kind === "firefox") return launchFirefox(opts);
  throw new Error(`unknown browser kind ${kind}`);
}

/** Run the rest of a launch; if it fails, close the browser, so a failed launch leaves no browser keeping the test
 * process alive. */
async function orClose(close, rest) {
  try {
    return await rest();
  } catch (e) {
    await close().catch(() => {});
    throw e;
  }
}

/** A page wrapper with the same few calls in both browsers. */
function wrapPage(raw) {
  return {
    raw,
    url: () => raw.url(),
    click: (selector) => raw.click(selector),
    evaluate: (fn, arg) => raw.evaluate(fn, arg),
    waitForSelector: (selector, timeout = 15_000) =>
      raw.waitForSelector(selector, { timeout }).then(() => undefined),
    close: () => raw.close().catch(() => {}),
  };
}

/** Shared by both: the extension page used by evalInExtension, reopened when it went away (e.g. the extension
 * reloaded). */
function extensionPageKeeper(open) {
  let page = null;
  return {
    async get() {
      if (page && !page.isClosed()) return page;
      page = await open();
      return page;
    },
    drop() {
      page = null;
    },
  };
}

const expression = (fn, arg) =>
  `(async () => JSON.stringify(await (${fn.toString()})(globalThis.browser ?? globalThis.chrome, ${JSON.stringify(
    arg ?? null,
  )}) ?? null))()`;

async function evalWith(keeper, fn, arg) {
  for (let attempt = 0; ; attempt++) {
    const page = await keeper.get();
    try {
      return JSON.parse(await page.evaluate(expression(fn, arg)));
    } catch (e) {
      // The extension page went away under us (extension reloaded, navigation): open it again once.
      if (attempt >= 2 || !/closed|destroyed|detached|navigat|no such|discarded|Target/i.test(e.message)) throw e;
      keeper.drop();
      await sleep(200);
    }
  }
}

// --- Chromium ---------------------------------------------------------------------------------------------------

/** Chromium reads its download folder from the profile's Preferences; keep whatever else is there. */
function setChromiumDownloadDir(profile, downloadsDir) {
  const file = path.join(profile, "Default", "Preferences");
  fs.mkdirSync(path.dirname(file), { recursive: true });
  let prefs = {};
  try {
    prefs = JSON.parse(fs.readFileSync(file, "utf8"));
  } catch {
    // A fresh profile.
  }
  prefs.download = { ...(prefs.download ?? {}), default_directory: downloadsDir, prompt_for_download: false };
  prefs.savefile = { ...(prefs.savefile ?? {}), default_directory: downloadsDir };
  fs.writeFileSync(file, JSON.stringify(prefs));
}

async function launchChromium({ profile, home, downloadsDir, host = true, env = {}, args = [] }) {
  if (host) registerHost(profile);
  setChromiumDownloadDir(profile, downloadsDir);
  const context = await chromium.launchPersistentContext(profile, {
    ...chromiumOptions({ home, env, args }),
    viewport: { width: 800, height: 600 },
  });
  return orClose(() => context.close(), () => finishChromium(context, { profile, downloadsDir }));
}

async function finishChromium(context, { profile, downloadsDir }) {
  // Playwright saves downloads under GUID names in a folder of its own (Browser.setDownloadBehavior allowAndName);
  // hand them back to the browser's own logic, so they land in the profile's download folder under their real names
  // and the extension sees what a user's browser does. The setting holds for the browser context.
  const control = context.pages()[0] ?? (await context.newPage());
  const cdp = await context.newCDPSession(control);
  await cdp.send("Browser.setDownloadBehavior", { behavior: "default" });

  const worker = async () => {
    const find = () => context.serviceWorkers().filter((w) => w.url().startsWith(`chrome-extension://${EXTENSION_ID}/`)).pop();
    const what = () =>
      `the extension's service worker at chrome-extension://${EXTENSION_ID}/ (workers: ${context
        .serviceWorkers()
        .map((w) => w.url())
        .join(", ")})`;
    return find() ?? (await waitFor(what(), find, { timeoutMs: 15_000 }));
  };
  await worker();
  const keeper = extensionPageKeeper(async () => {
    const page = await context.newPage();
    await page.goto(`chrome-extension://${EXTENSION_ID}/popup.html`);
    return page;
  });
  let last = null;
  let incognitoAllowed = false;
  const b = {
    kind: "chromium",
    profile,
    downloadsDir,
    context,
    extensionId: EXTENSION_ID,
    async newPage(url) {
      const page = await context.newPage();
      if (url) await page.goto(url);
      last = wrapPage(page);
      return last;
    },
    click: (selector) => last.click(selector),
    /** Pages opened by a page (window.open), as wrappers. */
    pages: () => context.pages().map(wrapPage),
    evalInExtension: (fn, arg) => evalWith(keeper, fn, arg),
    /** The worker's native port status: {connected, lastError}. */
    async hostStatus() {
      for (let attempt = 0; ; attempt++) {
        try {
          return await (await worker()).evaluate(() => self.sdmHostStatus());
        } catch (e) {
          if (attempt >= 3) throw e;
          await sleep(300);
        }
      }
    },
    /** Open a private (incognito) window on `url`, first allowing the extension there (as a user may), so the test
     * shows the extension leaves private downloads alone by choice, not because it cannot see them. */
    async openPrivate(url) {
      if (!incognitoAllowed) {
        const page = await context.newPage();
        await page.goto(`chrome://extensions/?id=${EXTENSION_ID}`);
        const call = (fn, arg) => page.evaluate(fn, arg);
        await call(
          (id) =>
            new Promise((resolve, reject) =>
              chrome.developerPrivate.updateExtensionConfiguration({ extensionId: id, incognitoAccess: true }, () =>
                chrome.runtime.lastError ? reject(new Error(chrome.runtime.lastError.message)) : resolve(),
              ),
            ),
          EXTENSION_ID,
        );
        incognitoAllowed = true;
        keeper.drop();
        // The extension reloads, and Chromium then disables an unpacked one loaded from the command line
        // ("unsupportedDeveloperExtension"): enable it again, as its toggle on chrome://extensions would.
        await waitFor("the extension to come back after allowing it in incognito", async () => {
          const info = await call(
            (id) => new Promise((resolve) => chrome.developerPrivate.getExtensionInfo(id, (i) => resolve({ state: i?.state }))),
            EXTENSION_ID,
          );
          if (info.state === "DISABLED") {
            await call((id) => new Promise((resolve) => chrome.management.setEnabled(id, true, () => resolve())), EXTENSION_ID);
            return false;
          }
          if (info.state !== "ENABLED") return false;
          const status = await b.hostStatus();
          const allowed = await b.evalInExtension((api) => api.extension.isAllowedIncognitoAccess());
          return status.connected && allowed;
        }, { timeoutMs: 45_000 });
        await page.close();
      }
      return b.evalInExtension((api, u) => api.windows.create({ incognito: true, url: u }).then((w) => w.id), url);
    },
    async closePrivateWindows() {
      await b.evalInExtension(async (api) => {
        for (const w of await api.windows.getAll()) if (w.incognito) await api.windows.remove(w.id);
      });
    },
    close: () => context.close().catch(() => {}),
  };
  return b;
}

// --- Firefox ----------------------------------------------------------------------------------------------------

function firefoxPrefs(downloadsDir) {
  return {
    // The add-on's moz-extension:// host, so its pages have a known address.
    "extensions.webextensions.uuids": JSON.stringify({ [GECKO_ID]: FIREFOX_UUID }),
    // MV3 host permissions are granted up front instead of asked for.
    "extensions.originControls.grantByDefault": true,
    // Downloads go to the folder, no dialog.
    "browser.download.folderList": 2,
    "browser.download.dir": downloadsDir,
    "browser.download.useDownloadDir": true,
    "browser.download.always_ask_before_handling_new_types": false,
    "browser.download.alwaysOpenPanel": false,
    "browser.download.panel.shown": true,
    "browser.download.start_downloads_in_tmp_dir": false,
    "browser.download.manager.addToRecentDocs": false,
    "browser.safebrowsing.downloads.enabled": false,
    "browser.safebrowsing.malware.enabled": false,
    "browser.safebrowsing.phishing.enabled": false,
    // user:pass@host links without the "are you sure you want to log in" prompt.
    "network.http.phishy-userpass-length": 255,
    "network.auth.confirmAuth.enabled": false,
    // Quit without asking about running downloads (the restart test closes it mid-download).
    "browser.download.warnOnQuit": false,
    "browser.warnOnQuit": false,
    "browser.sessionstore.resume_from_crash": false,
    "dom.disable_open_during_load": false,
    "datareporting.policy.dataSubmissionEnabled": false,
    "toolkit.telemetry.reportingpolicy.firstRun": false,
  };
}

/** Run privileged (chrome) JavaScript in Firefox's parent process over BiDi (needs --remote-allow-system-access). */
async function chromeEval(browser, source) {
  const tree = await browser.connection.send("browsingContext.getTree", { "moz:scope": "chrome" });
  const ctx = tree.result.contexts[0]?.context;
  if (!ctx) throw new Error("no chrome browsing context");
  const r = await browser.connection.send("script.evaluate", {
    expression: source,
    target: { context: ctx },
    awaitPromise: true,
  });
  if (r.result.type !== "success") throw new Error(`chrome script failed: ${JSON.stringify(r.result).slice(0, 500)}`);
  return r.result.result?.value;
}

async function launchFirefox({ profile, home, downloadsDir, host = true, env = {} }) {
  // Firefox reads host manifests from $HOME/.mozilla/native-messaging-hosts: a HOME of the test's own.
  const osHome = path.join(profile, "os-home");
  fs.mkdirSync(osHome, { recursive: true });
  if (host) {
    execFileSync(SDM_BIN, ["install", "--browser", "firefox"], {
      env: { ...process.env, HOME: osHome, SDM_HOME: path.join(osHome, "unused-home") },
      stdio: "pipe",
    });
  }
  const browser = await puppeteer.launch({
    browser: "firefox",
    executablePath: FIREFOX,
    headless: true,
    userDataDir: profile,
    args: ["--remote-allow-system-access"],
    env: { ...process.env, HOME: osHome, SDM_HOME: home, ...env },
    extraPrefsFirefox: firefoxPrefs(downloadsDir),
    defaultViewport: { width: 800, height: 600 },
    protocolTimeout: 60_000,
    handleSIGINT: false,
    handleSIGTERM: false,
    handleSIGHUP: false,
  });
  return orClose(() => browser.close(), () => finishFirefox(browser, { profile, downloadsDir }));
}

async function finishFirefox(browser, { profile, downloadsDir }) {
  // A temporary add-on, from the xpi as from a folder. Its id is the manifest's gecko id (one without it would get
  // a generated id), which the host's manifest allows.
  const id = await browser.installExtension(path.resolve(FIREFOX_EXTENSION));
  if (id !== GECKO_ID) throw new Error(`the add-on installed as ${id}, not ${GECKO_ID}`);
  const popupUrl = `moz-extension://${FIREFOX_UUID}/popup.html`;
  const keeper = extensionPageKeeper(async () => {
    const page = await browser.newPage();
    // BiDi never reports this navigation as finished: start it, then wait for the page itself (again if it did
    // not start).
    // (puppeteer's page.url() stays about:blank for the same reason: ask the page.)
    await waitFor("the extension page", async () => {
      const href = () => page.evaluate("location.href").catch(() => "");
      if ((await href()) !== popupUrl) await page.goto(popupUrl, { timeout: 1_000 }).catch(() => {});
      return (await href()) === popupUrl && (await page.evaluate("typeof browser?.downloads")) === "object";
    }, { timeoutMs: 20_000 });
    return page;
  });
  await keeper.get();
  let last = null;
  let privateAllowed = false;
  const b = {
    kind: "firefox",
    profile,
    downloadsDir,
    browser,
    extensionId: GECKO_ID,
    async newPage(url) {
      const page = await browser.newPage();
      if (url) await page.goto(url);
      last = wrapPage(page);
      return last;
    },
    click: (selector) => last.click(selector),
    pages: async () => (await browser.pages()).map(wrapPage),
    evalInExtension: (fn, arg) => evalWith(keeper, fn, arg),
    /** The background script's native port status: {connected, lastError}. */
    hostStatus: () =>
      b.evalInExtension(async (api) => {
        const bg = await api.runtime.getBackgroundPage();
        return bg.sdmHostStatus();
      }),
    /** Open a private window on `url`, first allowing the add-on in private windows (as a user may), so the test
     * shows the add-on leaves private downloads alone by choice, not because it cannot see them. */
    async openPrivate(url) {
      if (!privateAllowed) {
        await chromeEval(
          browser,
          `(async () => {
            const { ExtensionPermissions } = ChromeUtils.importESModule("resource://gre/modules/ExtensionPermissions.sys.mjs");
            await ExtensionPermissions.add(${JSON.stringify(GECKO_ID)}, { permissions: ["internal:privateBrowsingAllowed"], origins: [] });
            const { AddonManager } = ChromeUtils.importESModule("resource://gre/modules/AddonManager.sys.mjs");
            await (await AddonManager.getAddonByID(${JSON.stringify(GECKO_ID)})).reload();
            return true;
          })()`,
        );
        privateAllowed = true;
        keeper.drop();
        await waitFor("the add-on to come back allowed in private windows", async () => {
          const allowed = await b.evalInExtension((api) => api.extension.isAllowedIncognitoAccess());
          const status = await b.hostStatus();
          return allowed && status.connected;
        }, { timeoutMs: 30_000 });
      }
      return b.evalInExtension((api, u) => api.windows.create({ incognito: true, url: u }).then((w) => w.id), url);
    },
    async closePrivateWindows() {
      await b.evalInExtension(async (api) => {
        for (const w of await api.windows.getAll()) if (w.incognito) await api.windows.remove(w.id);
      });
    },
    close: () => browser.close().catch(() => {}),
  };
  return b;
}
