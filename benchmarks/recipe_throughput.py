"""Derm1M recipe throughput on a generated 1M-row Derm1M-style CSV (no images, validation off).

    python -m benchmarks.recipe_throughput [--rows 1000000]

Prints rows/s and the converter's peak RSS (measured in a child process) against the targets
(>= 50,000 rows/s, < 1 GB).
"""
import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from dermvlm.config import SynthConfig
from dermvlm.synth.sample import sample_attributes
from dermvlm.synth.text import texts_for
from dermvlm.synth.writer import DERM1M_COLUMNS, derm1m_row

TARGET_ROWS_PER_SECOND, TARGET_RSS_MB = 50_000, 1024


def write_csv(path, rows):
    """A Derm1M-style CSV: 500 distinct SynthDerm rows cycled, each with its own filename."""
    config = SynthConfig(seed=5)
    templates = []
    for i in range(500):
        attrs = sample_attributes(config, i)
        templates.append(derm1m_row(attrs, "", texts_for(attrs, "", 0)))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=DERM1M_COLUMNS)
        writer.writeheader()
        for i in range(rows):
            row = dict(templates[i % 500])
            row["filename"] = f"images/{i // 1000:04d}/{i:08d}.jpg"
            writer.writerow(row)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "derm1m_1m.csv"
        write_csv(table, args.rows)
        size_mb = table.stat().st_size / 1e6
        child = ("import resource, sys, time\n"
                 "from data_recipes import derm1m\n"
                 "t = time.perf_counter()\n"
                 "derm1m.main(sys.argv[1:])\n"
                 "print(time.perf_counter() - t, "
                 "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "
                 "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)\n")
        result = subprocess.run(
            [sys.executable, "-c", child, "--csv", str(table), "--out", f"{tmp}/out",
             "--no-validate-images", "--quiet"], capture_output=True, text=True, check=True)
        seconds, parent_mb, worker_mb = map(float, result.stdout.split())
    workers = os.cpu_count() or 1
    rate = args.rows / seconds
    print(f"derm1m recipe, {args.rows:,} rows ({size_mb:.0f} MB CSV), image validation off")
    print(f"  throughput : {rate:10,.0f} rows/s   target {TARGET_ROWS_PER_SECOND:,} "
          f"-> {rate / TARGET_ROWS_PER_SECOND:.2f}x")
    total_mb = parent_mb + workers * worker_mb
    print(f"  peak RSS   : parent {parent_mb:,.0f} MB, largest worker {worker_mb:,.0f} MB; "
          f"bound for all {workers} workers at once {total_mb:,.0f} MB   target < "
          f"{TARGET_RSS_MB} MB")


if __name__ == "__main__":
    main()
