// SDM's service worker (Chrome) / background script (Firefox): a router between the browser and SDM's host.
// It holds no download state the host does not own. One file per concern:
//   host.js    the native port: requests, replies, events, reconnection
//   capture.js taking over browser downloads (verified add, then cancel + erase; never lost, never doubled)
//   menu.js    the "Download with SDM" context menu
//   badge.js   badge count and notifications
//   policy.js  pure decisions (what to capture, which headers), unit-tested under node
// The popup opens its own native port (see wasm-ui/src/host.rs), so nothing here relays popup traffic.
// Every listener is registered synchronously at top level, so a worker woken by an event sees that event.

import { api } from "./api.js";
import { connect, onConnect, onEvent, request, status } from "./host.js";
import { initCapture, setCaptureSettings } from "./capture.js";
import { createMenu, MENU_ID, onContextMenuClick } from "./menu.js";
import { initBadge, onHostEvent, resetBadge } from "./badge.js";

const LIST_PAGE = 1000;

self.onContextMenuClick = onContextMenuClick;
self.sdmHostStatus = status;

api.contextMenus.onClicked.addListener((info, tab) => {
  if (info.menuItemId !== MENU_ID) return;
  self.onContextMenuClick(info, tab).catch((e) => console.warn("SDM: context menu download failed:", e));
});
const menu = () => createMenu().catch((e) => console.warn("SDM: cannot create the context menu:", e));
api.runtime.onInstalled.addListener(menu);
api.runtime.onStartup.addListener(menu);

initCapture();
initBadge();

onEvent((ev) => {
  if (ev.event === "settings") setCaptureSettings(ev.settings);
  onHostEvent(ev);
});

onConnect(async () => {
  await request("subscribe");
  const { settings } = await request("get_settings");
  setCaptureSettings(settings);
  const all = [];
  for (let offset = 0; ; ) {
    const page = await request("list", { offset, limit: LIST_PAGE });
    all.push(...page.downloads);
    offset += page.downloads.length;
    if (page.downloads.length === 0 || offset >= page.total) break;
  }
  resetBadge(all);
});

connect();
