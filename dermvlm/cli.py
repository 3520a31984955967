"""The `dermvlm` console script: the daily verbs, each a thin call into the library.

    dermvlm synth --out data/synth --n 1000 --seed 0 --preview data/synth/preview.png
    dermvlm demo                      # the README's main job
    dermvlm eval dermabench --questions Q --answers A --model SPEC --out DIR
    dermvlm build-default             # train the embedded default model
"""
import argparse
import json
import sys

from dermvlm.cliargs import OneLineParser, add_config_args, add_quantize_option, positive_int
from dermvlm.errors import DermvlmError
from dermvlm.bench.command import (add_compare_args, add_dermabench_args, run_compare,
                                   run_dermabench)


def _synth_parser(sub):
    p = sub.add_parser("synth", help="generate a SynthDerm dataset in the real formats",
                       description="Render SynthDerm images and write Derm1M CSV, SkinCon "
                       "table, LLaVA VQA, lesion reports and DermaBench-style questions.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--n", type=positive_int, help="number of images (overrides synth.n)")
    p.add_argument("--seed", type=int, help="dataset seed (overrides synth.seed)")
    p.add_argument("--size", type=positive_int, help="image side in pixels (synth.size)")
    p.add_argument("--split", choices=("train", "val", "test"), help="split label")
    p.add_argument("--holdout", choices=("none", "compositional"),
                   help="compositional: keep some lesion-type x colour pairs out of train")
    p.add_argument("--skin-types", help="Fitzpatrick types to draw, e.g. 1,2,3,4")
    p.add_argument("--workers", type=positive_int, help="rendering processes")
    p.add_argument("--preview", help="also write a labelled grid PNG of the first images")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_args(p)
    p.set_defaults(func=cmd_synth)


def _parse_skin_types(text):
    try:
        types = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise DermvlmError(f"--skin-types: expected numbers 1-6 like 1,2,3, got {text!r}")
    if not types or any(t not in range(1, 7) for t in types):
        raise DermvlmError(f"--skin-types: Fitzpatrick types are 1-6, got {text!r}")
    return types


def cmd_synth(args):
    from dermvlm.config import get_config
    from dermvlm.synth.writer import generate
    from dermvlm.synth.preview import preview_grid
    config = get_config(args.preset, args.overrides)
    synth = config.synth
    for name in ("n", "seed", "size", "split", "holdout", "workers"):
        if getattr(args, name) is not None:
            setattr(synth, name, getattr(args, name))
    if args.skin_types:
        synth.skin_types = _parse_skin_types(args.skin_types)
    summary = generate(synth, args.out, progress=not args.quiet)
    if args.preview:
        summary["preview"] = str(preview_grid(args.out, args.preview))
    print(json.dumps(summary, indent=1))
    return 0


def _demo_parser(sub):
    p = sub.add_parser("demo", help="the README's main job: a SynthDerm set, summary, preview")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--n", type=positive_int, default=256, help="images (default: 256)")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args):
    args_synth = argparse.Namespace(
        out=args.out, n=args.n, seed=0, size=224, split="train", holdout=None, skin_types=None,
        workers=None, preview=f"{args.out}/preview.png", quiet=False, preset="default",
        overrides=[])
    return cmd_synth(args_synth)


def _classify_parser(sub):
    p = sub.add_parser("classify", help="zero-shot diagnosis labels or SkinCon concept scores",
                       description="Zero-shot classification with an aligned image/text model "
                       "(DermLIP prompt ensemble; MONET-style scores for --concepts).")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--model", default="default", help="model folder, local-dir:PATH, "
                   "hf-hub:ORG/NAME (needs DERMVLM_ALLOW_HUB=1), an open_clip name, or "
                   "'default' (the embedded model; the default)")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--labels", help="comma-separated labels, e.g. 'melanoma,nevus'")
    group.add_argument("--labels-file", help="one label per line")
    group.add_argument("--concepts", choices=("skincon",), help="score the 48 SkinCon concepts")
    p.add_argument("--top-k", type=positive_int, default=5, help="results per image")
    p.add_argument("--out", help="also write predictions as CSV")
    p.add_argument("--ignore-ood", action="store_true", help="give scores for images the "
                   "model would otherwise refuse as unlike its training images")
    p.add_argument("--batch-size", type=positive_int, default=32,
                   help="images through the image tower at once (default 32)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_classify)


def embedded_or(spec, part):
    """`spec`, or for 'default' the embedded model's `part` ("clip" or "vlm") folder, after
    checking it against its manifest."""
    if spec != "default":
        return spec
    from dermvlm.embedded import checked_part
    return checked_part(part)


def _print_skipped(failures):
    """One stderr line per input that was not used: [(path, reason)]."""
    for path, reason in failures:
        print(f"skipped: {path} ({reason})", file=sys.stderr)


def cmd_classify(args):
    from dermvlm.hub import check_model_spec
    args.model = embedded_or(args.model, "clip")
    check_model_spec(args.model)
    from dermvlm.clip.classify import classify, read_labels, result_lines, write_predictions
    labels = None if args.concepts else read_labels(args.labels, args.labels_file)
    failures = []
    results = classify(args.images, args.model, labels=labels, concepts=bool(args.concepts),
                       top_k=args.top_k, failures=failures, ignore_ood=args.ignore_ood,
                       batch_size=args.batch_size, progress=not args.quiet)
    for result in results:
        print("\n".join(result_lines(*result)))
    _print_skipped(failures)
    if args.out:
        write_predictions(results, args.out)
    if not results:
        raise DermvlmError("no readable images among the inputs")
    if failures:
        print(f"dermvlm classify: {len(results)} image(s) classified, {len(failures)} could "
              "not be read (listed above)", file=sys.stderr)
        return 1
    return 0


VLM_HELP = "VLM folder from train.vlm, or 'default' (the embedded model; the default)"
CLIP_HELP = ("CLIP folder (default: the embedded model's, for --model default; none "
             "otherwise): its calibrated zero-shot ranking is the report's differential and the "
             "chat's case, and its trust file decides whether the image is too unlike the "
             "training images to answer")


def _vlm_parsers(sub):
    p = sub.add_parser("describe", help="structured lesion report (JSON + readable) for an "
                       "image", description="Generate a structured lesion report with a "
                       "trained VLM; the JSON always validates against the report schema.")
    p.add_argument("images", nargs="+", metavar="image", help="image files or folders; with "
                   "more than one image, one JSON line per report")
    p.add_argument("--model", default="default", help=VLM_HELP)
    p.add_argument("--json-only", action="store_true", help="print only the JSON")
    p.add_argument("--out", help="write the reports as JSON lines to this file; images "
                   "already in it are skipped (a stopped run resumes)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--method", choices=("constrained", "generate"), default="constrained",
                   help="constrained: decode the JSON under the schema on one KV cache (the "
                   "default, faster); generate: write it freely, then repair invalid fields")
    p.add_argument("--clip", help=CLIP_HELP)
    add_quantize_option(p, default="auto")
    p.set_defaults(func=cmd_describe)
    c = sub.add_parser("chat", help="terminal chat about an image",
                       description="Chat about an image with a trained VLM (streamed). "
                       "Empty line, /quit or end of input to stop.")
    c.add_argument("image", help="image file")
    c.add_argument("--model", default="default", help=VLM_HELP)
    c.add_argument("--max-new-tokens", type=positive_int, default=160)
    c.add_argument("--clip", help=CLIP_HELP)
    add_quantize_option(c, default="auto")
    c.set_defaults(func=cmd_chat)
    e = sub.add_parser("merge-export", help="write a standard transformers LLaVA checkpoint",
                       description="Merge the LoRA adapter and write a LLaVA checkpoint that "
                       "AutoModelForImageTextToText loads without dermvlm (vLLM/TGI can serve "
                       "it).")
    e.add_argument("--model", default="default", help=VLM_HELP)
    e.add_argument("--out", required=True, help="output folder")
    e.set_defaults(func=cmd_merge_export)


def _load_vlm_folder(spec):
    """The VLM named by --model (a folder, or 'default'), or one clear error."""
    from pathlib import Path
    folder = embedded_or(spec, "vlm")
    if not (Path(folder) / "dermvlm_vlm.json").is_file():
        raise DermvlmError(f"{folder}: not a VLM folder (expected dermvlm_vlm.json from "
                           "train.vlm)")
    from dermvlm.vlm.model import DermVLM
    return DermVLM.from_pretrained(folder)


def _load_vlm(args):
    vlm = _load_vlm_folder(args.model)
    vlm.decode_quantize = args.quantize
    from dermvlm.vlm.fastlm import for_vlm
    for_vlm(vlm)                            # a quantize this CPU cannot run fails here
    return vlm


def _assistant(args):
    """CLIP and VLM together (dermvlm.serve.Assistant) when a CLIP model is at hand (--clip,
    or the embedded one for --model default): the report and the chat then share the image's
    zero-shot case, as in the app. None for a VLM alone."""
    clip = args.clip or (embedded_or("default", "clip") if args.model == "default" else None)
    if clip is None:
        return None
    from dermvlm.serve import Assistant
    return Assistant(embedded_or(args.model, "vlm"), clip, quantize=args.quantize)


def cmd_describe(args):
    import json

    from tqdm import tqdm

    from dermvlm.imaging import ImageError, collect_images, open_image
    failures = []
    paths = collect_images(args.images, failures)
    done = _reports_done(args.out)
    todo = [p for p in paths if str(p) not in done]
    if not todo:
        _print_skipped(failures)
        if paths:
            print(f"dermvlm describe: all {len(paths)} image(s) are already in {args.out}",
                  file=sys.stderr)
            return 0
        raise DermvlmError("no images among the inputs")
    one = len(paths) == 1 and not args.out
    if one:
        open_image(paths[0])                # a bad file fails before the models load
    assistant = _assistant(args)
    vlm = assistant.vlm if assistant else _load_vlm(args)
    out = open(args.out, "a", encoding="utf-8") if args.out else None
    written = 0
    try:
        for path in tqdm(todo, desc="describe", unit="img", disable=args.quiet or one):
            try:
                report, repaired = _describe_one(args, assistant, vlm, path)
            except ImageError as exc:                # an unreadable image: the rest go on
                if one:
                    raise
                failures.append((str(path), str(exc).partition(": ")[2] or str(exc)))
                continue
            if one:
                _print_report(report, repaired, args.json_only)
                continue
            line = json.dumps({"image": str(path), "report": json.loads(
                report.model_dump_json()), "repaired": repaired})
            print(line, file=out or sys.stdout, flush=True)
            written += 1
    finally:
        if out:
            out.close()
    _print_skipped(failures)
    if failures:
        print(f"dermvlm describe: {written} report(s) written, {len(failures)} image(s) "
              "could not be read (listed above)", file=sys.stderr)
        return 1
    return 0


def _reports_done(out):
    """The images already reported in a JSON-lines file (a resumed run skips them)."""
    import json
    from pathlib import Path
    done = set()
    if out and Path(out).is_file():
        for number, line in enumerate(Path(out).read_text(encoding="utf-8").splitlines(), 1):
            try:
                done.add(json.loads(line)["image"])
            except (ValueError, KeyError, TypeError):
                raise DermvlmError(f"{out}, line {number}: not a report line from dermvlm "
                                   "describe (expected JSON with an 'image' key)") from None
    return done


def _describe_one(args, assistant, vlm, path):
    """(LesionReport, repaired fields) for one image file."""
    from dermvlm.imaging import open_image
    from dermvlm.vlm.infer import describe
    image = open_image(path)
    if assistant is None:
        report, _, repaired = describe(vlm, image, method=args.method)
    else:
        case = assistant.case(image, top_k=5)
        report, _, repaired = describe(vlm, image, ood=case.verdict, method=args.method,
                                       case=case)
    return report, repaired


def _print_report(report, repaired, json_only):
    from dermvlm.report import render_report_text
    print(report.model_dump_json(indent=1))
    if not json_only:
        print()
        print(render_report_text(report))
        if repaired:
            print(f"(fields not taken as the model wrote them: {', '.join(repaired)})")


def cmd_merge_export(args):
    from dermvlm.vlm.export import export_llava
    out = export_llava(_load_vlm_folder(args.model), args.out)
    print(f"wrote a LLaVA checkpoint to {out}; load it with "
          "transformers.AutoModelForImageTextToText.from_pretrained")
    return 0


def cmd_chat(args):
    from dermvlm.imaging import open_image
    from dermvlm.vlm.infer import generate
    image = open_image(args.image)          # a bad file fails before the models load
    assistant = _assistant(args)
    vlm = assistant.vlm if assistant else _load_vlm(args)
    print("dermvlm chat: research tool, not a diagnosis. Empty line or /quit to stop.")
    messages = []
    while True:
        try:
            question = input("you> ").strip()
        except EOFError:
            break
        if not question or question == "/quit":
            break
        print("dermvlm> ", end="", flush=True)
        shown = ""
        replies = (assistant.chat(image, messages, question, args.max_new_tokens) if assistant
                   else _growing(generate(vlm, image, messages + [
                       {"role": "user", "content": question}], stream=True,
                       max_new_tokens=args.max_new_tokens)))
        for text in replies:
            if text.startswith(shown):
                print(text[len(shown):], end="", flush=True)
            else:                            # replaced: held to the image analysis
                print(f"\ndermvlm (checked)> {text}", end="", flush=True)
            shown = text
        print()
        messages += [{"role": "user", "content": question},
                     {"role": "assistant", "content": shown.strip()}]
    return 0


def _growing(pieces):
    text = ""
    for piece in pieces:
        text += piece
        yield text


def _eval_parser(sub):
    p = sub.add_parser("eval", help="benchmarks: dermabench, compare")
    inner = p.add_subparsers(dest="benchmark", required=True, parser_class=OneLineParser)
    d = inner.add_parser("dermabench", help="DermaBench-style VQA evaluation of a model")
    add_dermabench_args(d)
    d.set_defaults(func=run_dermabench)
    c = inner.add_parser("compare", help="paired comparison of two dermabench runs")
    add_compare_args(c)
    c.set_defaults(func=run_compare)


def _build_default_parser(sub):
    # listed for --help; main() hands its arguments to train.build_default before parsing
    sub.add_parser("build-default", help="train the embedded default model on SynthDerm "
                   "(CPU: about an hour) and write dermvlm/default/ with its manifest; the "
                   "same as python -m train.build_default (see its --help)")


def build_default(argv):
    """The entry point train.build_default, looked up by name at run time: the library does
    not import entry points (tests/test_layers.py)."""
    import importlib
    return importlib.import_module("train.build_default").main(argv,
                                                                prog="dermvlm build-default")


def build_parser():
    parser = OneLineParser(prog="dermvlm", description="dermvlm: dermatology vision-language "
                           "toolkit (research use only, not for diagnosis).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    _synth_parser(sub)
    _classify_parser(sub)
    _vlm_parsers(sub)
    _demo_parser(sub)
    _eval_parser(sub)
    _build_default_parser(sub)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["build-default"]:
        return build_default(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DermvlmError as exc:
        print(f"dermvlm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
