"""DermaBench-style evaluation of a model on single-choice, multi-choice and open questions.

    # a SynthDerm set carries the default 22-question schema and its answers:
    python -m eval.dermabench --questions data/test/dermabench_questions.json \\
        --answers data/test/dermabench_answers.jsonl --model vlm:runs/vlm2/model --out bench/

--model: reference (the answers themselves: must score 100 %), random[:SEED] (chance),
clip:SPEC (zero-shot option scoring), vlm:FOLDER, openai:URL#MODEL (any OpenAI-compatible
endpoint, e.g. openai:http://127.0.0.1:8000/v1#my-model), default (the embedded VLM) or
default:clip. Rerunning with the same --out continues from its predictions.jsonl.
"""
import sys

from dermvlm.bench.command import add_dermabench_args, run_dermabench
from dermvlm.cliargs import OneLineParser


def main(argv=None):
    parser = OneLineParser(prog="python -m eval.dermabench",
                           description=__doc__.split("\n\n")[0])
    add_dermabench_args(parser)
    return run_dermabench(parser.parse_args(argv), prog="eval.dermabench")


if __name__ == "__main__":
    sys.exit(main())
