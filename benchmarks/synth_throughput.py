"""SynthDerm generation throughput on one core, and size on disk per 1,000 samples.

    python -m benchmarks.synth_throughput [--n 1000] [--size 224]

Prints render-only images/s, end-to-end images/s (attributes + render + JPEG + captions, VQA,
report, benchmark answers + all tables written), against the issue's target of 100 images/s.
"""
import argparse
import os
import tempfile
import time

from dermvlm.config import SynthConfig
from dermvlm.synth.render import render
from dermvlm.synth.sample import sample_attributes
from dermvlm.synth.writer import generate

TARGET_IMAGES_PER_SECOND = 100.0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    config = SynthConfig(n=args.n, size=args.size, seed=123)

    start = time.perf_counter()
    for i in range(args.n):
        render(sample_attributes(config, i), args.size)
    render_rate = args.n / (time.perf_counter() - start)

    with tempfile.TemporaryDirectory() as out:
        summary = generate(config, out, progress=False)
        full_rate = summary["images_per_second"]
        mb_per_1000 = summary["bytes_on_disk"] / args.n * 1000 / 1e6
    print(f"SynthDerm {args.size}px, n={args.n}, 1 core (pid affinity), cpu={os.cpu_count()}")
    print(f"  render only (attributes + pixels) : {render_rate:8.1f} img/s")
    print(f"  end to end (files + all formats)  : {full_rate:8.1f} img/s")
    print(f"  target                            : {TARGET_IMAGES_PER_SECOND:8.1f} img/s  "
          f"ratio end-to-end/target = {full_rate / TARGET_IMAGES_PER_SECOND:.2f}x")
    print(f"  size on disk per 1,000 samples    : {mb_per_1000:8.1f} MB")


if __name__ == "__main__":
    main()
