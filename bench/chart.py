"""Draw docs/bench.png from bench/results.json (written by `cargo xtask bench`).

usage: python3 bench/chart.py RESULTS.json OUT.png

One panel per scenario that has numbers: bars are medians, whiskers span min to max.
"""

import json
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {
    "sdm": "#d9480f",
    "sdm serve": "#d9480f",
    "sdm (baseline)": "#ffa94d",
    "sdm --no-splice": "#ffa94d",
    "link bound": "#7048e8",
    "aria2c -x N": "#343a40",
    "aria2c (defaults)": "#868e96",
    "aria2c (matched)": "#495057",
    "aria2c -j 5": "#495057",
    "axel": "#1c7ed6",
    "curl": "#37b24d",
    "curl --parallel": "#37b24d",
}


def metric(row, name):
    m = row["metrics"].get(name)
    if not m or m["median"] is None:
        return None
    return m["median"], m["min"], m["max"]


def bars(ax, rows, name, label, title, lower_better=True, clip=None):
    """One bar per row (client, setting) with a min-max whisker; bars above `clip` are cut at it, labelled."""
    items = [(r, metric(r, name)) for r in rows]
    items = [(r, v) for r, v in items if v]
    if not items:
        ax.set_visible(False)
        return
    labels = [
        r["client"] + ("" if r["setting"] in ("", "N=8", "N=1") else "\n" + r["setting"]) for r, _ in items
    ]
    med = [v[0] for _, v in items]
    err = [[v[0] - v[1] for _, v in items], [v[2] - v[0] for _, v in items]]
    colors = [COLORS.get(r["client"], "#adb5bd") for r, _ in items]
    ax.bar(range(len(items)), med, yerr=err, color=colors, capsize=3)
    ax.set_xticks(range(len(items)))
    ax.set_xticklabels(labels, fontsize=7, rotation=30, ha="right")
    ax.set_ylabel(label)
    ax.set_title(title + (" (lower is better)" if lower_better else " (higher is better)"), fontsize=9)
    if clip is not None:
        ax.set_ylim(top=clip)
    for i, m in enumerate(med):
        y = m if clip is None else min(m, clip * 0.95)
        ax.annotate(f"{m:.3g}", (i, y), ha="center", va="bottom", fontsize=7)


def capped(ax, sc):
    """Throughput against connections, one line per client, with the ideal N x cap."""
    clients = []
    for r in sc["rows"]:
        if r["client"] not in clients:
            clients.append(r["client"])
    for c in clients:
        pts = []
        for r in sc["rows"]:
            v = metric(r, "speed")
            if r["client"] == c and v:
                pts.append((int(r["setting"].split("=")[1]), v[0]))
        if pts:
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=c, color=COLORS.get(c, "#adb5bd"))
    ns = [1, 4, 8, 16]
    ax.plot(ns, [5 * n for n in ns], "k--", linewidth=0.8, label="ideal N x 5 MiB/s")
    ax.set_xticks(ns)
    ax.set_xlabel("connections")
    ax.set_ylabel("MiB/s")
    ax.set_title("5 MiB/s per connection (higher is better)", fontsize=9)
    ax.legend(fontsize=7)


def main():
    src, out = sys.argv[1], sys.argv[2]
    with open(src) as f:
        doc = json.load(f)
    sc = {s["key"]: s for s in doc["scenarios"]}
    panels = []
    if "loopback" in sc:
        panels.append(lambda ax: bars(ax, sc["loopback"]["rows"], "wall", "s", "loopback: wall"))
        panels.append(lambda ax: bars(ax, sc["loopback"]["rows"], "cpu", "s", "loopback: user+sys CPU"))
        panels.append(lambda ax: bars(ax, sc["loopback"]["rows"], "rss", "MB", "loopback: peak RSS"))
    if "capped" in sc:
        panels.append(lambda ax: capped(ax, sc["capped"]))
    if "latency" in sc and sc["latency"]["rows"]:
        panels.append(lambda ax: bars(ax, sc["latency"]["rows"], "speed", "MiB/s", "100 ms RTT + 0.1 % loss", False))
    if "tail" in sc:
        panels.append(lambda ax: bars(ax, sc["tail"]["rows"], "wall", "s", "one slow range: wall"))
    if "https" in sc:
        panels.append(lambda ax: bars(ax, sc["https"]["rows"], "wall", "s", "https: wall"))
        panels.append(lambda ax: bars(ax, sc["https"]["rows"], "cpu", "s", "https: user+sys CPU"))
        panels.append(lambda ax: bars(ax, sc["https"]["rows"], "rss", "MB", "https: peak RSS"))
    if "queue" in sc:
        # The title says how many files of what size ("200 files of 256 KiB through a queue, ...").
        m = re.match(r"(\d+) files of (\d+ \w+)", sc["queue"]["title"])
        what = f"{m.group(1)} x {m.group(2)} queue" if m else "queue"
        panels.append(lambda ax: bars(ax, sc["queue"]["rows"], "wall", "s", what + ": wall"))
    if "cap" in sc:
        panels.append(
            lambda ax: bars(ax, sc["cap"]["rows"], "max 1 s", "% over cap", "speed cap: largest 1 s window", clip=120)
        )
    if "service" in sc:
        svc = [r for r in sc["service"]["rows"] if "rss" in r["metrics"]]
        panels.append(lambda ax: bars(ax, svc, "rss", "MB", "service RSS"))
    if not panels:
        sys.exit("no scenario with numbers to draw")
    cols = 3
    nrows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.8 * nrows), squeeze=False)
    for ax, draw in zip(axes.flat, panels):
        draw(ax)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    m = doc["machine"]
    fig.suptitle(f"SDM vs aria2c, axel, curl - {m['date']}, {m['cores']} cores, medians of {doc['runs']} runs", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
