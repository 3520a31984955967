"""Latency of what the app does, on the embedded default (or given models): model load, one
image's zero-shot classify + concept scores, chat time to first token and tokens/s (streamed,
greedy), and a structured report.

    python -m benchmarks.app_latency                    # embedded default, CPU
    python -m benchmarks.app_latency --vlm runs/vlm2/model --clip runs/clip/model
    python -m benchmarks.app_latency --baseline runs/prev_default    # a default folder beside

With --baseline (a folder holding a default's vlm/ and clip/), both are measured in the same
run, one after the other on the same images, and the ratios (this / baseline) are printed.
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from dermvlm.cliargs import add_quantize_option
from dermvlm.embedded import clip_spec, vlm_folder
from dermvlm.imaging import open_image
from dermvlm.serve import Assistant

# the last one makes the model write its long JSON report as a chat reply: a steady-state
# decoding rate (short answers are a few words, where the streamer's word pieces dominate)
QUESTIONS = ("What colour is the lesion?", "What is the most likely diagnosis?",
             "Write the structured lesion report for this image.")


def measure(vlm, clip, images, quantize, max_new_tokens):
    """The app's latencies for one model pair on PIL `images`."""
    started = time.perf_counter()
    assistant = Assistant(vlm, clip, quantize=quantize)
    load = time.perf_counter() - started
    classify = []
    for image in images:
        t0 = time.perf_counter()
        assistant.classify(image)
        classify.append(time.perf_counter() - t0)
    first, rates, lengths, long_rates = [], [], [], []
    for image, question in zip(images, QUESTIONS * len(images)):
        t0 = time.perf_counter()
        stamps, reply = [], ""
        for reply in assistant.chat(image, [], question, max_new_tokens=max_new_tokens):
            stamps.append(time.perf_counter())
        n_tokens = len(assistant.vlm.tokenizer(reply, add_special_tokens=False)["input_ids"])
        first.append(stamps[0] - t0)
        if n_tokens > 1 and stamps[-1] > stamps[0]:
            rates.append((n_tokens - 1) / (stamps[-1] - stamps[0]))
            if n_tokens >= 64:
                long_rates.append(rates[-1])
        lengths.append(n_tokens)
    reports = []
    for image in images[:3]:
        t0 = time.perf_counter()
        assistant.report(image)
        reports.append(time.perf_counter() - t0)
    return {
        "load_seconds": round(load, 2),
        "classify_seconds_median": round(statistics.median(classify), 3),
        "chat_first_token_seconds_median": round(statistics.median(first), 3),
        "chat_tokens_per_second_median": round(statistics.median(rates), 1) if rates else None,
        "chat_reply_tokens_median": statistics.median(lengths),
        "chat_tokens_per_second_long_replies": [round(r, 1) for r in long_rates],
        "report_seconds_median": round(statistics.median(reports), 2)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vlm")
    parser.add_argument("--clip")
    parser.add_argument("--baseline", help="a default's folder (vlm/, clip/) measured beside")
    parser.add_argument("--images", default=str(Path(__file__).parent.parent / "docs" /
                                                "examples"))
    parser.add_argument("--max-new-tokens", type=int, default=256)
    add_quantize_option(parser, default="auto")
    args = parser.parse_args(argv)
    images = [open_image(p) for p in sorted(Path(args.images).glob("*.jpg"))]
    result = {"device": "cuda" if torch.cuda.is_available() else
              f"cpu ({torch.get_num_threads()} threads)", "quantize": args.quantize,
              "images": len(images)}
    result["model"] = measure(args.vlm, args.clip, images, args.quantize, args.max_new_tokens)
    if args.baseline:
        folder = Path(args.baseline)
        result["baseline"] = measure(vlm_folder(folder), clip_spec(folder), images,
                                     args.quantize, args.max_new_tokens)
        result["ratio_model_over_baseline"] = {
            key: round(value / result["baseline"][key], 3)
            for key, value in result["model"].items()
            if isinstance(value, (int, float)) and result["baseline"].get(key)}
    print(json.dumps(result, indent=1))

if __name__ == "__main__":
    main()
