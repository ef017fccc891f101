"""The bench's report (issue 19): charts rendered to PNG with matplotlib from a run's
results, embedded in the markdown, with the pull/push and one-connection ratios."""

from __future__ import annotations

import sys
from pathlib import Path

LAB = Path(__file__).resolve().parents[2] / "infra" / "lab"
sys.path.insert(0, str(LAB))

import bench
import charts


def _summary(seconds: dict[str, float], total: int) -> dict[str, object]:
    return {m: {"median_s": s, "min_s": s, "max_s": s, "n": 1, "mb_per_s": round(total / s / 1e6, 1),
                "ratio_to_best_baseline": s / seconds["rsync"], "ratio_to_rsync": s / seconds["rsync"]}
            for m, s in seconds.items()}


def _report() -> dict[str, object]:
    rtts = {}
    for rtt, slow in (("0", 1.0), ("100", 4.0)):
        seconds = {"rsync": 5 * slow, "ketter_cli_direct": 2 * slow,
                   "ketter_cli_direct_1conn": 3 * slow, "ketter_cli_pull": 2.2 * slow}
        total = 400_000_000
        summary = _summary(seconds, total)
        runs = {m: [{"seconds": s, "complete": True, "connections": 6, "rtt_ms": float(rtt)}]
                for m, s in seconds.items()}
        rtts[rtt] = {
            "port": 22, "link": {"bytes": 2**30, "median_s": 9.0, "mb_per_s": 119.0},
            "datasets": {"BIG": {"dataset": {"n_files": 1, "file_bytes": total,
                                             "total_bytes": total},
                                 "best_baseline": "rsync", "summary": summary, "runs": runs}},
            "series": {"points": [[0, 0], [0.5, 10_000_000], [1.0, 60_000_000], [1.5, 120_000_000]],
                       "seconds": 1.6, "connections": 6, "streams": 6, "rtt_ms": 101.0,
                       "send_rate_bytes_s": 8e7, "dataset": "BIG"},
        }
    return {"started_utc": "now", "scale": "0.25", "repeats": 1, "ketter_via": ["cli"],
            "lab": {"LAB_RATE": "1gbit", "LAB_DELAY_MODE": "relay"}, "rtts": rtts}


def test_charts_are_pngs_and_the_report_embeds_them(tmp_path: Path) -> None:
    report = _report()
    for entry in report["rtts"].values():  # type: ignore[attr-defined]
        for d in entry["datasets"].values():
            pull, push = d["summary"]["ketter_cli_pull"], d["summary"]["ketter_cli_direct"]
            pull["ratio_to_push"] = round(pull["median_s"] / push["median_s"], 3)
    made = charts.render(report, tmp_path / "charts")
    assert [p.name for p in made] == ["throughput.png", "series.png"]
    for png in made:
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    md = bench.render_markdown(report, [p.relative_to(tmp_path) for p in made])
    assert "![throughput](charts/throughput.png)" in md and "![series](charts/series.png)" in md
    assert "1.10x the push" in md
    assert "connections 6" in md and "RTT measured 101.0 ms" in md


def test_cli_facts_read_the_path_line() -> None:
    facts = bench._cli_facts(
        "done: 1 files, 400 MiB in 9.10 s (46.1 MB/s), strategy DIRECT, 6 streams\n"
        "  phases: send 8.00s, verify 0.50s\n"
        "  path: RTT 101.2 ms, 6 ssh connections, send 52.4 MB/s\n")
    assert facts["streams"] == 6 and facts["connections"] == 6 and facts["rtt_ms"] == 101.2
    assert facts["phase_timings"] == {"send": 8.0, "verify": 0.5}
