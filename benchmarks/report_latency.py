"""Structured-report latency on the embedded default (or a VLM folder): describe's constrained
decoding (the default) against writing the JSON freely and repairing it (the previous
algorithm), on the same images in one run; median seconds per report and the ratio. With the
default (or --clip), also the app's report: the image's zero-shot case, then the constrained
decoding given the case's differential and findings as forced text (`Assistant.report`).

    python -m benchmarks.report_latency                      # docs/examples, embedded default
    python -m benchmarks.report_latency --images runs/data/seed1/images --n 20
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from dermvlm.embedded import checked_part
from dermvlm.vlm.infer import describe
from dermvlm.vlm.model import DermVLM


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vlm", help="VLM folder (default: the embedded default)")
    parser.add_argument("--images", default=str(Path(__file__).parent.parent / "docs" /
                                                "examples"))
    parser.add_argument("--n", type=int, default=6, help="images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clip", help="CLIP folder for the app's report (default: the "
                        "embedded one when --vlm is not given)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    vlm = DermVLM.from_pretrained(args.vlm or checked_part("vlm"))
    images = sorted(Path(args.images).glob("*.jpg"))[:args.n]
    describe(vlm, images[0])                                   # warm-up
    figures = {}
    for method in ("constrained", "generate"):
        seconds, repaired = [], []
        for image in images:
            start = time.perf_counter()
            _, _, fields = describe(vlm, image, method=method)
            seconds.append(time.perf_counter() - start)
            repaired.append(len(fields))
        figures[method] = {"median_s": round(statistics.median(seconds), 2),
                           "max_s": round(max(seconds), 2),
                           "mean_fields_repaired": round(sum(repaired) / len(repaired), 2)}
    figures["speed-up"] = round(figures["generate"]["median_s"] /
                                figures["constrained"]["median_s"], 2)
    if args.clip or not args.vlm:
        from dermvlm.imaging import open_image
        from dermvlm.serve import Assistant
        assistant = Assistant(args.vlm, args.clip)
        seconds = []
        for image in images:
            opened = open_image(image)
            start = time.perf_counter()
            assistant.report(opened)
            seconds.append(time.perf_counter() - start)
        figures["app_report_with_case"] = {"median_s": round(statistics.median(seconds), 2),
                                           "max_s": round(max(seconds), 2)}
        figures["app_speed-up_vs_generate"] = round(figures["generate"]["median_s"] /
                                                    statistics.median(seconds), 2)
    print(json.dumps({"images": len(images), "threads": args.threads, **figures}, indent=1))


if __name__ == "__main__":
    main()
