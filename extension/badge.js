// The toolbar badge (how many downloads are transferring) and notifications when one completes or fails.
// The set below is a display cache rebuilt from the host's `list` on every connection, not download state.

import { api } from "./api.js";

const downloading = new Set();

/** The popup's setting (extension storage, this browser only): `false` turns off notifications of finished downloads. */
export const NOTIFY_KEY = "sdm-notify";

/** Notify of a finished download unless the user turned that off; read at each use, so a change applies at once. */
async function notifyFinished(id, title, message) {
  const stored = await Promise.resolve(api.storage.local.get(NOTIFY_KEY)).catch(() => ({}));
  if (stored?.[NOTIFY_KEY] === false) return;
  notify(id, title, message);
}

function show() {
  const n = downloading.size;
  api.action.setBadgeText({ text: n > 0 ? String(n) : "" }).catch(() => {});
}

/** Show a notification; never throws (a browser without the API, or a refusal, only logs). */
export function notify(id, title, message) {
  Promise.resolve()
    .then(() =>
      api.notifications.create(id, { type: "basic", iconUrl: api.runtime.getURL("icons/128.png"), title, message }),
    )
    .catch((e) => console.warn("SDM: notification failed:", e));
}

/** Rebuild from a full `list` (paged by the caller). */
export function resetBadge(downloads) {
  downloading.clear();
  for (const d of downloads) if (d.status === "downloading") downloading.add(d.id);
  show();
}

/** Fold one host event into the badge, and notify finished downloads. */
export function onHostEvent(ev) {
  switch (ev.event) {
    case "progress":
      for (const p of ev.downloads) {
        if (p.status === "downloading") downloading.add(p.id);
        else downloading.delete(p.id);
      }
      break;
    case "state": {
      const d = ev.download;
      if (d.status === "downloading") downloading.add(d.id);
      else downloading.delete(d.id);
      const name = d.filename || d.url;
      if (d.status === "completed") notifyFinished(`sdm-${d.id}`, "Download complete", name);
      if (d.status === "failed") notifyFinished(`sdm-${d.id}`, "Download failed", `${name}: ${d.error ?? "unknown error"}`);
      break;
    }
    case "removed":
      downloading.delete(ev.id);
      break;
    default:
      return;
  }
  show();
}

export function initBadge() {
  api.action.setBadgeBackgroundColor({ color: "#2563eb" }).catch(() => {});
}
