"""`dermvlm classify` on a folder: images/s through the batched path against one image at a
time, on the same files and model in one run (both with the trust check the model carries).

    python -m benchmarks.classify_throughput --n 1000          # SynthDerm images, embedded model
    python -m benchmarks.classify_throughput --images my_photos/ --model runs/clip/model
    python -m benchmarks.classify_throughput --n 200 --baseline runs/prev_default/clip

With --baseline (another CLIP folder), both are measured on the same files in one run and the
ratios (this / baseline) are printed. With --compare-layout, the model is measured again
feeding its towers the plain way (contiguous tensors, 64 images a piece: dermvlm.imaging's
CPU_CHANNELS_LAST and CPU_CHUNK off), and the ratios (as shipped / plain) are printed.
"""
import argparse
import json
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from dermvlm.clip.classify import classify
from dermvlm.embedded import checked_part

LABELS = ["melanoma", "melanocytic nevus", "psoriasis", "seborrhoeic keratosis"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", help="image folder (default: a new SynthDerm set)")
    parser.add_argument("--n", type=int, default=1000, help="SynthDerm images to make")
    parser.add_argument("--model", default=None, help="CLIP folder (default: embedded)")
    parser.add_argument("--baseline", help="a CLIP folder measured beside it")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compare-layout", action="store_true",
                        help="also measure the towers fed contiguous 64-image pieces")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = args.model or checked_part("clip")
    folder = args.images
    if folder is None:
        from dermvlm.config import get_config
        from dermvlm.synth.writer import generate
        folder = tempfile.mkdtemp(prefix="classify-bench-")
        generate(get_config("tiny", [f"synth.n={args.n}", "synth.seed=5", "synth.size=96"])
                 .synth, folder, progress=False)
        folder = f"{folder}/images"
    # one untimed pass of each model over two images first: the process's one-off costs
    # (torch's first kernels, the not-skin check's ImageNet tower, cached once per process)
    # would otherwise be charged to whichever is measured first
    first = sorted(str(p) for p in Path(folder).iterdir())[:2]
    for warm in (model, args.baseline):
        if warm:
            classify(first, warm, labels=LABELS, batch_size=1, progress=False)
    if args.compare_layout:         # the plain layout's kernels are first used here too
        with plain_layout():
            classify(first, model, labels=LABELS, batch_size=2, progress=False)
    result = {"threads": args.threads, "model": model,
              **throughput(folder, model, args.batch_size)}
    if args.baseline:
        result["baseline"] = {"model": args.baseline,
                              **throughput(folder, args.baseline, args.batch_size)}
        result["ratio_model_over_baseline"] = {
            name: round(result[name]["images_per_s"] /
                        result["baseline"][name]["images_per_s"], 3)
            for name in ("one_at_a_time", "batched")}
    if args.compare_layout:
        with plain_layout():
            result["plain_layout"] = throughput(folder, model, args.batch_size)
        result["ratio_shipped_over_plain_layout"] = {
            name: round(result[name]["images_per_s"] /
                        result["plain_layout"][name]["images_per_s"], 3)
            for name in ("one_at_a_time", "batched")}
    print(json.dumps(result, indent=1))


@contextmanager
def plain_layout():
    """Feed the image towers contiguous 64-image pieces, as dermvlm did before."""
    from dermvlm import imaging
    shipped = imaging.CPU_CHANNELS_LAST, imaging.CPU_CHUNK
    imaging.CPU_CHANNELS_LAST, imaging.CPU_CHUNK = False, 64
    try:
        yield
    finally:
        imaging.CPU_CHANNELS_LAST, imaging.CPU_CHUNK = shipped


def throughput(folder, model, batch_size):
    """{one_at_a_time, batched: {images, seconds, images_per_s, seconds_per_image},
    speed-up}: `classify` over the folder (each pass loads the model once, as the CLI does)."""
    figures = {}
    for name, batch in (("one_at_a_time", 1), ("batched", batch_size)):
        start = time.perf_counter()
        results = classify([folder], model, labels=LABELS, batch_size=batch, progress=True)
        seconds = time.perf_counter() - start          # includes loading the model once
        figures[name] = {"images": len(results), "seconds": round(seconds, 2),
                         "images_per_s": round(len(results) / seconds, 1),
                         "seconds_per_image": round(seconds / len(results), 4)}
    figures["speed-up"] = round(figures["batched"]["images_per_s"] /
                                figures["one_at_a_time"]["images_per_s"], 2)
    return figures


if __name__ == "__main__":
    main()
