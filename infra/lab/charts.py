"""Charts of a bench run (issue 19), rendered to PNG with matplotlib for docs/lab_report.md.

- ``throughput.png``: MB/s (median) per method and dataset, one panel per RTT;
- ``series.png``: one DIRECT job's throughput over time at each RTT (``series.py``).

    python charts.py docs/lab_results/bench.json docs/lab_results/
"""

from __future__ import annotations

import json
import sys
from itertools import pairwise
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

MB = 1_000_000
# The methods worth a bar (others stay in the tables): baselines and Ketter's ways.
SHOWN = ("rsync", "tar_ssh", "ketter_cli_direct_1conn", "ketter_cli_direct", "ketter_cli_pull",
         "ketter_cli_zip_first", "ketter_api_direct", "ketter_api_auto")


def throughput(report: dict[str, Any], out: Path) -> Path | None:
    rtts = list(report["rtts"].items())
    if not rtts:
        return None
    fig, axes = plt.subplots(len(rtts), 1, figsize=(10, 3.2 * len(rtts)), squeeze=False)
    for ax, (rtt, entry) in zip(axes[:, 0], rtts):
        names = list(entry["datasets"])
        methods = [m for m in SHOWN if any(m in d["summary"] for d in entry["datasets"].values())]
        width = 0.8 / max(1, len(methods))
        for k, method in enumerate(methods):
            values = [entry["datasets"][n]["summary"].get(method, {}).get("mb_per_s", 0) or 0
                      for n in names]
            ax.bar([i + k * width for i in range(len(names))], values, width, label=method)
        link = entry.get("link", {}).get("mb_per_s")
        if link:
            ax.axhline(link, color="grey", linestyle="--", linewidth=1)
            ax.text(len(names) - 0.5, link, f"one ssh cat {link} MB/s", va="bottom", ha="right",
                    fontsize=8, color="grey")
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names)
        ax.set_ylabel("MB/s (median)")
        ax.set_title(f"RTT {rtt} ms")
        ax.legend(fontsize=7, ncol=4, loc="upper left")
    fig.tight_layout()
    path = out / "throughput.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def series(report: dict[str, Any], out: Path) -> Path | None:
    runs = [(rtt, e["series"]) for rtt, e in report["rtts"].items()
            if isinstance(e.get("series"), dict) and e["series"].get("points")]
    if not runs:
        return None
    fig, ax = plt.subplots(figsize=(10, 3.6))
    for rtt, s in runs:
        points = s["points"]
        times = [(a[0] + b[0]) / 2 for a, b in pairwise(points)]
        rates = [(b[1] - a[1]) / (b[0] - a[0]) / MB if b[0] > a[0] else 0
                 for a, b in pairwise(points)]
        ax.plot(times, rates, label=f"RTT {rtt} ms: {s.get('connections')} conn., "
                                    f"measured RTT {s.get('rtt_ms')} ms")
    ax.set_xlabel("seconds since the job started")
    ax.set_ylabel("MB/s (0.1 s steps)")
    ax.set_title(f"One Ketter DIRECT job ({runs[0][1].get('dataset', '')}): throughput over time")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "series.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def render(report: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    return [p for p in (throughput(report, out), series(report, out)) if p is not None]


if __name__ == "__main__":
    for made in render(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])):
        print(made)
