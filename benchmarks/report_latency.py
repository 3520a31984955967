"""Structured-report latency on the embedded default (or a VLM folder), in one run on the same
images: describe's constrained decoding on dermvlm's decode path (dermvlm.vlm.fastlm: one
preallocated cache, candidates scored as a tree in one row), the same decoding on HF's cache
(the previous algorithm: batched candidates on a copied cache), and writing the JSON freely
with HF `generate` and repairing it (the first algorithm); median seconds per report and the
ratios. With the default (or --clip), also the app's report (`Assistant.report`: the image's
zero-shot case, then the constrained decoding given its differential and findings), on both
paths.

    python -m benchmarks.report_latency                      # docs/examples, embedded default
    python -m benchmarks.report_latency --images runs/data/seed1/images --n 20
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from dermvlm.cliargs import add_quantize_option
from dermvlm.embedded import checked_part
from dermvlm.vlm.infer import describe
from dermvlm.vlm.model import DermVLM

PATHS = {"constrained, dermvlm decode": ("constrained", True),
         "constrained, HF cache (before)": ("constrained", False),
         "generate + repair, HF (first)": ("generate", False)}


def _median(fn, images):
    seconds = []
    for image in images:
        start = time.perf_counter()
        fn(image)
        seconds.append(time.perf_counter() - start)
    return {"median_s": round(statistics.median(seconds), 2), "max_s": round(max(seconds), 2)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vlm", help="VLM folder (default: the embedded default)")
    parser.add_argument("--images", default=str(Path(__file__).parent.parent / "docs" /
                                                "examples"))
    parser.add_argument("--n", type=int, default=6, help="images")
    parser.add_argument("--threads", type=int, default=2)
    add_quantize_option(parser)
    parser.add_argument("--clip", help="CLIP folder for the app's report (default: the "
                        "embedded one when --vlm is not given)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    vlm = DermVLM.from_pretrained(args.vlm or checked_part("vlm"))
    vlm.decode_quantize = args.quantize
    images = sorted(Path(args.images).glob("*.jpg"))[:args.n]
    describe(vlm, images[0])                                   # warm-up
    figures = {}
    for name, (method, fast) in PATHS.items():
        vlm.fast_decode = fast
        figures[name] = _median(lambda image: describe(vlm, image, method=method), images)
    if args.clip or not args.vlm:
        from dermvlm.imaging import open_image
        from dermvlm.serve import Assistant
        assistant = Assistant(args.vlm, args.clip, quantize=args.quantize)
        for fast in (True, False):
            assistant.vlm.fast_decode = fast
            name = "app report with case, " + ("dermvlm decode" if fast else "HF cache (before)")
            figures[name] = _median(lambda image: assistant.report(open_image(image)), images)
    base = figures["constrained, dermvlm decode"]["median_s"]
    for name, row in figures.items():
        row["vs dermvlm decode"] = round(row["median_s"] / base, 2)
    print(json.dumps({"images": len(images), "threads": args.threads, "quantize": args.quantize,
                      **figures}, indent=1))


if __name__ == "__main__":
    main()
