// "Download with SDM" on links, images, video and audio.

import { api } from "./api.js";
import { headersFor } from "./capture.js";
import { request } from "./host.js";
import { notify } from "./badge.js";
import { referrerFor } from "./policy.js";

export const MENU_ID = "download-with-sdm";

/** Menus persist across worker restarts; recreate them on install and browser start to pick up changes. */
export async function createMenu() {
  await api.contextMenus.removeAll();
  api.contextMenus.create({ id: MENU_ID, title: "Download with SDM", contexts: ["link", "image", "video", "audio"] });
}

/** Add the clicked link or media to SDM, with the credentials a click on it would send: the URL's cookies from the
 * tab's own cookie store (never a SameSite=Strict cookie from another site's page), and the page as referrer when it
 * is the link's origin, else the page's origin only. Resolves to the host's `add` result (`null` when SDM does not
 * take it). */
export async function onContextMenuClick(info, tab) {
  if (info.menuItemId !== undefined && info.menuItemId !== MENU_ID) return null;
  const url = info.linkUrl || info.srcUrl;
  if (!url) return null;
  if (tab?.incognito) {
    // Private windows leave nothing behind; SDM's queue, history and state would.
    notify(`sdm-menu-${Date.now()}`, "SDM does not take private downloads", "Downloads from private windows stay with the browser.");
    return null;
  }
  const referrer = referrerFor(info.pageUrl, url);
  // The Referer goes in the headers.
  const add = { url, headers: await headersFor(url, referrer, tab?.cookieStoreId) };
  try {
    return await request("add", add);
  } catch (e) {
    notify(`sdm-menu-${Date.now()}`, "SDM could not take the download", `${e.message}. If SDM is not installed, run \`sdm install\`.`);
    throw e;
  }
}
