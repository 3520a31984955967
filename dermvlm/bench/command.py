"""The DermaBench-style evaluation as a command: its arguments and the call that runs it and
prints a summary. `dermvlm eval dermabench` and `python -m eval.dermabench` share both."""
import json
import sys

from dermvlm.cliargs import positive_int
from dermvlm.errors import DermvlmError


def add_dermabench_args(parser):
    parser.add_argument("--questions", required=True, help="questions file (JSON schema)")
    parser.add_argument("--answers", required=True,
                        help="answers JSONL: image, question_id, answer, fitzpatrick")
    parser.add_argument("--images", help="folder the answer rows' image paths are relative "
                        "to (default: the answers file's folder)")
    parser.add_argument("--model", required=True, help="reference | random[:SEED] | clip:SPEC"
                        " | vlm:FOLDER | untuned:FOLDER (its untrained baseline) | "
                        "hf:FOLDER_OR_NAME (any transformers image-text-to-text model) | "
                        "openai:URL#MODEL | default | default:clip")
    parser.add_argument("--out", required=True, help="output folder (resumable)")
    parser.add_argument("--limit", type=positive_int, help="score only the first N answers")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_dermabench(args, prog="dermvlm eval dermabench"):
    """Under torchrun or `accelerate launch` the items are answered over the ranks and rank 0
    reports."""
    from dermvlm.bench.run import run_benchmark
    from dermvlm.training import distributed
    rank, world, _ = distributed()
    try:
        results = run_benchmark(args.questions, args.answers, args.model, args.out,
                                images_dir=args.images, limit=args.limit, seed=args.seed,
                                progress=not args.quiet, rank=rank, world=world)
    except DermvlmError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    if rank != 0:
        return 0
    print(json.dumps({"model": results["model"], "n_items": results["n_items"],
                      "left_out": results["left_out"], "unparsed": results["unparsed"],
                      "by_type": results["by_type"],
                      "fitzpatrick_gap": results["by_fitzpatrick"]["best_minus_worst"],
                      "report": f"{args.out}/report.md"}, indent=1))
    return 0


def add_compare_args(parser):
    parser.add_argument("run_a", help="benchmark output folder of model A (the baseline)")
    parser.add_argument("run_b", help="benchmark output folder of model B")
    parser.add_argument("--out", help="write compare.json, compare.md, compare.png here "
                        "(default: RUN_B/compare_vs_A)")
    parser.add_argument("--resamples", type=positive_int, default=2000,
                        help="bootstrap resamples and permutations (default 2000)")
    parser.add_argument("--seed", type=int, default=0)


def run_compare(args, prog="dermvlm eval compare"):
    from pathlib import Path

    from dermvlm.bench.compare import compare_runs
    out = args.out or str(Path(args.run_b) / f"compare_vs_{Path(args.run_a).name}")
    try:
        result = compare_runs(args.run_a, args.run_b, out, args.resamples, args.seed)
    except DermvlmError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    for name, row in result["comparisons"].items():
        if name.endswith("/ primary"):
            print(f"{name:40s} {row['a']:.3f} -> {row['b']:.3f}  {row['difference']:+.3f} "
                  f"[{row['ci95'][0]:+.3f}, {row['ci95'][1]:+.3f}]  p={row['p_value']:.4f}")
    print(f"report: {out}/compare.md")
    return 0
