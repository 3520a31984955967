"""Train the skin VLM: stage 1 (projector on captions), stage 2 (LoRA + projector on
conversations).

    # CPU, SmolLM2 from its wheel, the image tower of a train.clip run:
    python -m train.vlm --stage 1 --data data/train --out runs/vlm1 --preset tiny \\
        --set vlm.vision=runs/clip_tiny/model
    python -m train.vlm --stage 2 --data data/train --out runs/vlm2 --preset tiny \\
        --init runs/vlm1/model --set vlm.vision=runs/clip_tiny/model

    # a GPU, a larger LM in 4 bit (QLoRA), 8 GPUs:
    torchrun --nproc_per_node 8 -m train.vlm --stage 2 --data llava.json --out runs/vlm2 \\
        --init runs/vlm1/model --set vlm.lm=Qwen/Qwen2.5-1.5B-Instruct --set vlm.quantize_4bit=true

--data: a SynthDerm folder (stage 1 reads its captions, stage 2 its vqa_llava.json), a LLaVA
JSON file, or a manifest. Rerunning with the same --out resumes from its latest checkpoint.
"""
import json
import sys

from dermvlm.cliargs import OneLineParser, add_config_args
from dermvlm.config import get_config
from dermvlm.errors import DermvlmError


def build_parser():
    parser = OneLineParser(prog="python -m train.vlm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", type=int, choices=(1, 2), required=True)
    parser.add_argument("--data", required=True, help="training data (see above)")
    parser.add_argument("--out", required=True, help="run folder")
    parser.add_argument("--init", help="stage 2: the stage-1 model folder")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--max-steps", type=int, help="stop after this many steps in this call")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_args(parser)
    return parser


def check_device(name):
    """'cuda' without a GPU is a clear error rather than a CUDA traceback."""
    import torch
    if name == "cuda" and not torch.cuda.is_available():
        raise DermvlmError("--device cuda was asked for, but no CUDA GPU is visible; use "
                           "--device cpu (or auto)")
    if name not in ("auto", "cpu", "cuda"):
        raise DermvlmError(f"--device must be auto, cpu or cuda, got {name!r}")


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        check_device(args.device)
        if args.device == "cpu":
            import os
            os.environ["CUDA_VISIBLE_DEVICES"] = ""
        from dermvlm.vlm.train import train_vlm
        config = get_config(args.preset, args.overrides)
        summary = train_vlm(config, args.data, args.out, stage=args.stage, init=args.init,
                            max_steps=args.max_steps, progress=not args.quiet)
    except DermvlmError as exc:
        print(f"train.vlm: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
