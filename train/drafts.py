"""Write a VLM folder's draft store (reply_drafts.json, dermvlm.vlm.drafts): the assistant's
own greedy replies to common questions on SynthDerm images (and real training images, with
--real), decoded as the app decodes them. The replies a model gives do not depend on its
store; its decoding speed with --quantize dynamic does.

    python -m train.drafts --real runs/build_default/data/isic9/train   # the embedded default
    python -m train.drafts --vlm runs/vlm2/model --clip runs/clip/model --images 24
"""
import sys

from dermvlm.cliargs import OneLineParser, positive_int
from dermvlm.vlm.drafts import read_drafts, write_drafts

# the questions a store is made from: the kinds of question the chat was trained on (what,
# which, how serious, what next, describe, the report), in wordings of their own
QUESTIONS = ("What is the most likely diagnosis?", "Could it be something else?",
             "Is this lesion dangerous?", "Should I see a doctor about it?",
             "Can you describe the findings?", "What changes should worry me?",
             "Describe this lesion as a structured JSON report.")


def make_drafts(assistant, images, questions=QUESTIONS, max_new_tokens=256, progress=True):
    """The assistant's greedy replies to `questions` on `images`, as the app asks them."""
    from tqdm import tqdm

    from dermvlm.vlm.infer import generate
    replies = []
    jobs = [(image, question) for image in images for question in questions]
    for image, question in tqdm(jobs, desc="replies", disable=not progress):
        _, _, messages = assistant.prepare_turn(image, [], question)
        if not isinstance(messages, str):          # a ready answer needs no draft
            replies.append(generate(assistant.vlm, image, messages, max_new_tokens))
    return replies


def synthderm_images(count, seed=20261130):
    """`count` SynthDerm images (PIL), in memory, of a seed no build trains on."""
    from dermvlm.config import SynthConfig
    from dermvlm.synth.render import render
    from dermvlm.synth.sample import sample_attributes
    config = SynthConfig(n=count, seed=seed)
    return [render(sample_attributes(config, i), config.size) for i in range(count)]


def real_images(spec, count):
    """`count` images of a labelled set (dermvlm.labelled: a manifest, or a folder of class
    subfolders), picked by a hash of the file name (not by the folder's order)."""
    from dermvlm.imaging import open_image
    from dermvlm.labelled import labelled_records, pick_records
    return [open_image(r.image) for r in pick_records(labelled_records(spec), count)]


def drafts_stage(vlm_folder, clip_spec, images=24, real=None, real_count=12, progress=True):
    """Write vlm_folder's draft store from the models in vlm_folder and clip_spec: replies on
    `images` SynthDerm images and, given `real` (a labelled set the model trained on),
    `real_count` of its images. Replies are decoded as the app decodes them (--quantize
    auto: dynamic int8 where this CPU has the kernel), whose replies the store serves."""
    from dermvlm.serve import Assistant
    assistant = Assistant(vlm_folder, clip_spec, quantize="auto")
    pictures = synthderm_images(images) + (real_images(real, real_count) if real else [])
    return write_drafts(vlm_folder, make_drafts(assistant, pictures, progress=progress))


def main(argv=None):
    parser = OneLineParser(
        prog="python -m train.drafts",
        description=__doc__.split("\n\n")[0] + " Without --vlm and --clip: the embedded "
                    "default's, and its manifest records the new file.")
    parser.add_argument("--vlm", help="VLM folder (default: the embedded default's)")
    parser.add_argument("--clip", help="CLIP model whose analysis opens each chat (default: "
                                       "the embedded default's)")
    parser.add_argument("--images", type=positive_int, default=24,
                        help="SynthDerm images to ask about")
    parser.add_argument("--real", help="real images the model was trained on (a manifest or "
                        "a folder of class subfolders): their replies too, for real photos")
    parser.add_argument("--real-images", type=positive_int, default=12,
                        help="how many of --real to ask about")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    from dermvlm import embedded
    from dermvlm.errors import DermvlmError
    if bool(args.vlm) != bool(args.clip):
        parser.error("give both --vlm and --clip, or neither (the embedded default)")
    try:
        if args.vlm is None:
            embedded.check_default()
        path = drafts_stage(args.vlm or embedded.vlm_folder(),
                            args.clip or embedded.clip_spec(), args.images, args.real,
                            args.real_images, progress=not args.quiet)
    except DermvlmError as exc:
        parser.exit(2, f"{parser.prog}: {exc}\n")
    if args.vlm is None:
        embedded.record_file(path)
    print(f"{path}: {len(read_drafts(path.parent))} replies", file=sys.stderr)


if __name__ == "__main__":
    main()
