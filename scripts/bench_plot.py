#!/usr/bin/env python3
"""Plots of scripts/bench.sh beside its markdown report: intake throughput against sessions
for each server (new connection per message: solid; one connection per session, -d: dashed),
and the histogram of smtp-stress's transaction latencies (MAIL to the reply after the dot).

usage: bench_plot.py --intake FILE --latencies FILE --out FILE.svg [--title TEXT]
  --intake: tab-separated lines "server label<TAB>sessions<TAB>mode (new|reuse)<TAB>msg/s";
            lines whose rate is not a number (a failed run) are left out.
  --latencies: one latency in microseconds per line (smtp-stress --latencies); may be empty.
The format follows the file name's extension (svg, png). Text stays text in SVG.
"""
import argparse, math, sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_intake(path):
    series = {}
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 4:
                continue
            label, sessions, mode, rate = parts
            try:
                point = (int(sessions), float(rate))
            except ValueError:
                continue
            series.setdefault((label, mode), []).append(point)
    return {k: sorted(v) for k, v in series.items()}


def read_latencies(path):
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                out.append(int(line) / 1000.0)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--intake", required=True)
    ap.add_argument("--latencies", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default="smtpd benchmark")
    args = ap.parse_args()
    plt.rcParams["svg.fonttype"] = "none"
    series = read_intake(args.intake)
    lat = read_latencies(args.latencies)
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 5))
    fig.suptitle(args.title)
    colours = {}
    for (label, mode), points in sorted(series.items()):
        colour = colours.setdefault(label, "C%d" % len(colours))
        xs, ys = zip(*points)
        a.plot(xs, ys, marker="o", color=colour, linestyle="-" if mode == "new" else "--",
               label=label + ("" if mode == "new" else " (-d, connection reuse)"))
    a.set_xscale("log")
    a.set_yscale("log")
    sessions = sorted({x for points in series.values() for x, _ in points})
    if sessions:
        a.set_xticks(sessions)
        a.set_xticklabels([str(x) for x in sessions])
        a.minorticks_off()
    a.set_xlabel("concurrent sessions")
    a.set_ylabel("messages per second")
    a.set_title("Intake throughput (smtp-source, 4 KiB messages)")
    a.grid(True, which="both", alpha=0.3)
    if series:
        a.legend(fontsize=7)
    if lat:
        lo, hi = max(min(lat), 0.01), max(lat)
        bins = [lo * (hi / lo) ** (i / 40) for i in range(41)] if hi > lo else 10
        b.hist(lat, bins=bins, color="C0")
        b.set_xscale("log")
        srt = sorted(lat)
        p50 = srt[max(math.ceil(0.5 * len(srt)), 1) - 1]
        p99 = srt[max(math.ceil(0.99 * len(srt)), 1) - 1]
        for v, name in ((p50, "p50"), (p99, "p99")):
            b.axvline(v, color="C3", linestyle=":")
            b.text(v, b.get_ylim()[1] * 0.9, " %s %.1f ms" % (name, v), color="C3", fontsize=8)
        b.set_title("Transaction latency, %d transactions (smtp-stress)" % len(lat))
    else:
        b.set_title("Transaction latency: no samples")
    b.set_xlabel("milliseconds (MAIL to the reply after the dot)")
    b.set_ylabel("transactions")
    b.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
