"""Benchmark: the time tracking adds to ``caffegen demo`` (goal: under 5 %).

The demo (write 896 images, prepare, train 230 iterations with real Caffe, evaluate) runs as a user
runs it, a fresh process each time, without tracking and with ``--report-to tensorboard``,
``mlflow`` (a new local SQLite store each time, the costliest case) and both. Each configuration
first runs once untimed, as a user's first run: Caffe installed, files cached, and the tables of a
new MLflow store made once for the installed MLflow and kept in caffegen's cache.

The configurations take turns within each round, so a machine that slows down slows them all; each
is compared with the run without tracking of its own round, and the median of those ratios is kept
(beside the median time of each), with a 90 % bootstrap interval over the rounds. The goal counts as
met only when the whole interval is under it, missed only when the whole interval is over it, and
otherwise as unsettled at this machine's noise: more rounds narrow the interval.

Usage: python bench/tracking.py [--rounds N] [--dir FOLDER]
"""

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CAFFEGEN = [sys.executable, "-m", "caffegen"]
CONFIGURATIONS = {"none": [], "tensorboard": ["--report-to", "tensorboard"], "mlflow": ["--report-to", "mlflow"],
                  "both": ["--report-to", "tensorboard,mlflow"]}
GOAL = 0.05
RESAMPLES = 2000


def demo_seconds(folder, options):
    """The wall time of one ``caffegen demo`` into ``folder`` with ``options``; it must succeed."""
    start = time.perf_counter()
    done = subprocess.run([*CAFFEGEN, "demo", "-o", str(folder), *options], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"caffegen demo {' '.join(options)} failed: {done.stderr.strip()[-500:]}")
    return seconds


def measure(folder, rounds):
    """{configuration: [seconds of each round]}, the configurations taking turns in a rotated order."""
    names = list(CONFIGURATIONS)
    times = {name: [] for name in names}
    for name in names:  # Caffe installed, caches warm, before anything is timed
        demo_seconds(folder / f"warm-up-{name}", CONFIGURATIONS[name])
    for round_number in range(rounds):
        for name in names[round_number % len(names):] + names[:round_number % len(names)]:
            times[name].append(demo_seconds(folder / f"{name}-{round_number}", CONFIGURATIONS[name]))
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", type=Path, help="where the demos are written (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        times = measure(Path(tmp), args.rounds)
    print(f"caffegen demo, {args.rounds} rounds, fresh process each; time added: the median over the rounds of "
          "each against the run without tracking of its round, [90 % bootstrap interval]")
    for name, seconds in times.items():
        ratios = [value / base - 1 for value, base in zip(seconds, times["none"])]
        low, high = interval(ratios)
        verdict = "" if name == "none" else f"  goal under {GOAL:.0%}: {judged(low, high)}"
        print(f"  {name:12} {statistics.median(seconds):6.2f} s ({', '.join(f'{value:.2f}' for value in seconds)})  "
              f"{statistics.median(ratios):+.1%} [{low:+.1%}, {high:+.1%}]{verdict}")


def interval(ratios, seed=0):
    """The 90 % bootstrap interval of the median of ``ratios``: the rounds drawn again with replacement."""
    draw = random.Random(seed)
    medians = sorted(statistics.median(draw.choices(ratios, k=len(ratios))) for _ in range(RESAMPLES))
    return medians[int(0.05 * RESAMPLES)], medians[int(0.95 * RESAMPLES) - 1]


def judged(low, high):
    """The goal's verdict from the interval: met or missed only when all of it says so."""
    if high < GOAL:
        return "met"
    if low >= GOAL:
        return "missed"
    return "unsettled at this noise (more rounds narrow the interval)"


if __name__ == "__main__":
    main()
