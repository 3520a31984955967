"""Held-out VQA evaluation of a VLM folder on a SynthDerm set: lettered multiple-choice
accuracy per question family, open-ended answers per attribute, and structured-report
validity.

Multiple-choice questions are scored two ways: `closed` reads the letter the model writes;
`closed_cloze` asks the question the way training asked it openly and picks the option whose
trained answer sentence ("Papule.") the model finds most likely (it needs no letter-matching
skill, which a 135M LM lacks even with the caption in the prompt), next to `majority`, the
score of always giving the most common true answer. Both carry `balanced`, the mean recall
over true answers, which no prior lifts above 1 / (number of true answers). `open` asks each
image open questions in the training phrasing ("What colour is the lesion?") and checks that
the reply names the image's true value, next to the score of always naming the most common
value.
--swap-images K repeats all three with each question asked about another image; --untuned
scores an untrained baseline (the folder's image tower and base LM, a fresh projector).

    python -m eval.vqa --model runs/vlm2/model --data data/test --out vqa.json
"""
import sys

from dermvlm.cliargs import OneLineParser, print_result


def main(argv=None):
    parser = OneLineParser(prog="python -m eval.vqa", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="VLM folder (train.vlm output)")
    parser.add_argument("--data", required=True, help="SynthDerm folder (held-out seed)")
    parser.add_argument("--limit", type=int, default=200,
                        help="multiple-choice questions (0 skips them)")
    parser.add_argument("--open", type=int, default=100, metavar="N",
                        help="images for the open-ended questions (6 each; 0 skips them)")
    parser.add_argument("--reports", type=int, default=20,
                        help="images to describe (0 skips them)")
    parser.add_argument("--swap-images", type=int, default=0, metavar="K",
                        help="also score each question on the image of question i+K (an "
                        "ablation: does the model read the image?)")
    parser.add_argument("--untuned", action="store_true",
                        help="score the baseline instead: the folder's image tower and base "
                        "LM with a fresh projector (seed vlm.seed) and no adapter")
    parser.add_argument("--out", help="write the results JSON here")
    args = parser.parse_args(argv)
    return print_result("eval.vqa", lambda: evaluate(args), args.out)


def evaluate(args):
    from dermvlm.vlm.build import untuned_baseline
    from dermvlm.vlm.evaluate import evaluate_vlm, require_eval_files
    from dermvlm.vlm.model import DermVLM
    require_eval_files(args.data, args.limit > 0, args.open > 0 or args.reports > 0)
    vlm = untuned_baseline(args.model) if args.untuned else DermVLM.from_pretrained(args.model)
    return {"model": args.model, "untuned": args.untuned, "data": args.data,
            **evaluate_vlm(vlm, args.data, closed=args.limit, cloze=args.limit,
                           open_images=args.open, reports=args.reports,
                           swap_images=args.swap_images)}


if __name__ == "__main__":
    sys.exit(main())
