"""Contrastive alignment of a skin image encoder with a text model (open_clip).

    # tiny CPU run on SynthDerm (minutes):
    dermvlm synth --out data/train --n 3000 --seed 0 --size 96
    dermvlm synth --out data/val --n 300 --seed 1 --size 96 --split val
    python -m train.clip --data data/train --val data/val --out runs/clip_tiny --preset tiny

    # a GPU run from DermLIP-style weights, on shards, 8 GPUs:
    torchrun --nproc_per_node 8 -m train.clip --data shards/ --out runs/clip \\
        --preset base --set clip.init=local-dir:/weights/DermLIP_ViT-B-16

--data takes a SynthDerm folder, a JSONL manifest (or its folder) or a folder of webdataset
shards. Rerunning with the same --out resumes from its latest checkpoint.
"""
import json
import sys

from dermvlm.cliargs import OneLineParser, add_config_args
from dermvlm.config import get_config
from dermvlm.errors import DermvlmError


def build_parser():
    parser = OneLineParser(prog="python -m train.clip", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="training pairs (see above)")
    parser.add_argument("--val", help="validation pairs for zero-shot/retrieval evaluation")
    parser.add_argument("--out", required=True, help="run folder (checkpoints, metrics, model)")
    parser.add_argument("--max-steps", type=int, help="stop after this many steps in this call")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_args(parser)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        from dermvlm.clip.train import train_clip
        config = get_config(args.preset, args.overrides)
        summary = train_clip(config, args.data, args.out, val=args.val,
                             max_steps=args.max_steps, progress=not args.quiet)
    except DermvlmError as exc:
        print(f"train.clip: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
