#!/usr/bin/env python3
"""Plots `scripts/sim`'s two curves: tasks scheduled and tasks running over time.

Input: the CSV files `shoal sim --csv` writes (unix_ms,elapsed_ms,registered,ready,assigned,running),
one per sim process; their counts are summed on a common time axis (each file's last value
holds until its next line, and a killed process's last line holds to the end).
"""

import argparse
import bisect
import csv

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read(path):
    rows = []
    with open(path) as f:
        for row in csv.DictReader(f):
            rows.append((int(row["unix_ms"]), int(row["assigned"]), int(row["running"])))
    return rows


def value_at(rows, times, t, column):
    i = bisect.bisect_right(times, t) - 1
    return rows[i][column] if i >= 0 else 0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--deploy-ms", type=int, required=True)
    parser.add_argument("--kill-ms", type=int)
    parser.add_argument("--title", default="")
    parser.add_argument("csv", nargs="+")
    args = parser.parse_args()

    series = [read(p) for p in args.csv]
    series = [s for s in series if s]
    stamps = [[r[0] for r in s] for s in series]
    grid = sorted({t for ts in stamps for t in ts if t >= args.deploy_ms})
    xs = [(t - args.deploy_ms) / 1000 for t in grid]
    scheduled = [sum(value_at(s, ts, t, 1) for s, ts in zip(series, stamps)) for t in grid]
    running = [sum(value_at(s, ts, t, 2) for s, ts in zip(series, stamps)) for t in grid]

    fig, ax = plt.subplots(figsize=(9, 5), dpi=110)
    ax.plot(xs, scheduled, label="tasks scheduled (assignment received by its node)")
    ax.plot(xs, running, label="tasks running (report acknowledged)")
    if args.kill_ms:
        ax.axvline((args.kill_ms - args.deploy_ms) / 1000, color="grey", linestyle="--", linewidth=1)
        ax.annotate(" nodes lost", ((args.kill_ms - args.deploy_ms) / 1000, 1), xycoords=("data", "axes fraction"),
                    rotation=90, va="top", ha="right", color="grey")
    ax.set_xlabel("seconds since deploy")
    ax.set_ylabel("tasks")
    ax.set_title(args.title)
    ax.grid(True, alpha=0.3)
    ax.ticklabel_format(axis="y", style="plain")
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{int(v):,}"))
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(args.out)


if __name__ == "__main__":
    main()
