// "Download with SDM" on links, images, video and audio.

import { api } from "./api.js";
import { headersFor } from "./capture.js";
import { request } from "./host.js";
import { notify } from "./badge.js";

export const MENU_ID = "download-with-sdm";

/** Menus persist across worker restarts; recreate them on install and browser start to pick up changes. */
export async function createMenu() {
  await api.contextMenus.removeAll();
  api.contextMenus.create({ id: MENU_ID, title: "Download with SDM", contexts: ["link", "image", "video", "audio"] });
}

/** Add the clicked link or media to SDM, with the page as referrer and the URL's own cookies. Resolves to the
 * host's `add` result. */
export async function onContextMenuClick(info, _tab) {
  if (info.menuItemId !== undefined && info.menuItemId !== MENU_ID) return null;
  const url = info.linkUrl || info.srcUrl;
  if (!url) return null;
  const add = { url, headers: await headersFor(url, info.pageUrl) };
  if (info.pageUrl) add.referrer = info.pageUrl;
  try {
    return await request("add", add);
  } catch (e) {
    notify(`sdm-menu-${Date.now()}`, "SDM could not take the download", `${e.message}. If SDM is not installed, run \`sdm install\`.`);
    throw e;
  }
}
