"""How well a CLIP model folder knows when not to answer: out-of-distribution AUROC of its
trust score (in-distribution held-out images vs non-skin images), the share of each
in-distribution set it refuses at its threshold, the share of non-skin images it catches, and
the expected calibration error (ECE) of its diagnosis probabilities before and after the
fitted temperature, per labelled set.

    python -m eval.ood --make-nonskin runs/data/nonskin        # sample photos, documents, noise
    python -m eval.ood --make-package-nonskin runs/data/nonskin2   # other packages' images
    python -m eval.ood --model dermvlm/default/clip --id runs/data/seed1 \\
        --id ../shared/realdata/isic9/Test --ood runs/data/nonskin --out ood.json

An --id set's labels that are not the ontology's diagnoses (a real set's own classes) are
scored in that set's own label space for ECE.
"""
import sys
from pathlib import Path

import numpy as np

from dermvlm.cliargs import OneLineParser, print_result
from dermvlm.errors import DermvlmError


def make_nonskin(out, seed=0):
    """Write non-skin images: the sample photos scikit-image and scikit-learn ship (whole and
    four random crops each), rendered documents, blank, noise and gradient images."""
    import skimage.data
    from PIL import Image, ImageDraw
    from sklearn.datasets import load_sample_images
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    photos = [(name, getattr(skimage.data, name)()) for name in (
        "astronaut", "camera", "cat", "coffee", "coins", "colorwheel", "grass", "gravel",
        "horse", "hubble_deep_field", "immunohistochemistry", "logo", "moon", "page", "retina",
        "rocket", "text", "brick", "clock", "checkerboard")]
    photos += [(f"sklearn{i}", a) for i, a in enumerate(load_sample_images().images)]
    for name, array in photos:
        array = array.astype(np.float64)
        array = 255 * (array - array.min()) / max(1e-9, array.max() - array.min())
        image = Image.fromarray(array.astype(np.uint8)).convert("RGB")
        image.save(out / f"{name}.jpg")
        for j in range(4):
            w, h = image.size
            side = int(min(w, h) * rng.uniform(0.3, 0.8))
            x, y = rng.integers(0, w - side + 1), rng.integers(0, h - side + 1)
            image.crop((x, y, x + side, y + side)).save(out / f"{name}_crop{j}.jpg")
    for j in range(20):
        page = Image.new("RGB", (300, 400), tuple(int(v) for v in rng.integers(220, 256, 3)))
        draw = ImageDraw.Draw(page)
        for line in range(18):
            words = " ".join("".join(chr(c) for c in rng.integers(97, 123, rng.integers(2, 9)))
                             for _ in range(6))
            draw.text((15, 15 + 20 * line), words, fill=(0, 0, 0))
        page.save(out / f"document{j}.png")
    for j in range(10):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        Image.new("RGB", (200, 200), colour).save(out / f"blank{j}.png")
        noise = rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)
        Image.fromarray(noise).save(out / f"noise{j}.png")
        ramp = np.linspace(0, 255, 200)[None, :, None] * rng.uniform(0, 1, 3)[None, None]
        Image.fromarray(np.repeat(ramp, 200, 0).astype(np.uint8)).save(out / f"gradient{j}.png")
    return sorted(str(p) for p in out.iterdir())


PACKAGE_IMAGES = ("gradio", "matplotlib", "networkx", "sympy", "playwright", "scipy")


def make_package_nonskin(out, seed=1, packages=PACKAGE_IMAGES):
    """Write a second non-skin set, apart from the first's sources: the images of at least
    64 px that installed packages ship (gradio's animal and landmark samples, matplotlib's
    logos, networkx and sympy test plots, ...), whole and two random crops each; portraits are
    left out (a face crop is skin)."""
    import importlib.util

    from PIL import Image
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for package in packages:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        root = Path(list(spec.submodule_search_locations)[0])
        for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg",
                                                                              ".png")):
            if "hopper" in path.name or "copy" in path.name:
                continue                          # a portrait; a duplicate
            try:
                image = Image.open(path).convert("RGB")
            except OSError:
                continue
            if min(image.size) < 64:
                continue
            stem = f"{package}_{path.stem}"
            image.save(out / f"{stem}.jpg")
            w, h = image.size
            for j in range(2):
                side = int(min(w, h) * rng.uniform(0.4, 0.8))
                x, y = rng.integers(0, w - side + 1), rng.integers(0, h - side + 1)
                image.crop((x, y, x + side, y + side)).save(out / f"{stem}_crop{j}.jpg")
    return sorted(str(p) for p in out.iterdir())


def calibration(zs, features, labels, trust):
    """ECE before and after the temperature (each image's judged modality's), in the set's
    own label space."""
    from dermvlm.ontology import CONDITIONS
    from dermvlm.trust import expected_calibration_error
    from dermvlm.zeroshot import zeroshot_modality
    import torch
    names = [c.name for c in CONDITIONS]
    space = names if all(label in names for label in labels) else sorted(set(labels))
    targets = torch.tensor([space.index(label) for label in labels])
    logits = zs.logits(features, space)
    return {"classes": len(space), "label_space": "ontology" if space is names else "own",
            "top1": round(float((logits.argmax(1) == targets).float().mean()), 4),
            "ece_uncalibrated": round(expected_calibration_error(logits.softmax(1), targets), 4),
            "ece_calibrated": round(expected_calibration_error(
                trust.calibrated(logits, zeroshot_modality(zs, features)[0]), targets), 4)}


def concept_calibration(zs, features, paths, labels, trust):
    """ECE of the SkinCon concept scores as MONET computes them and as fitted, over
    (image, concept) pairs of the concepts that occur, for a set with concept labels."""
    import os

    import torch

    from dermvlm.trust import binary_calibration_error
    rows = [i for i, p in enumerate(paths) if labels.get(os.path.normpath(p))]
    names = sorted({k for i in rows for k, v in labels[os.path.normpath(paths[i])].items()
                    if v})
    if not names:
        return {}
    truth = torch.tensor([[labels[os.path.normpath(paths[i])][n] for n in names]
                          for i in rows])
    margins = zs.concept_margins(features[rows], names)
    fitted = (trust.settings.concept_temperature, trust.settings.concept_bias)
    ece = [binary_calibration_error(torch.sigmoid((margins - b) / t).mean(-1), truth)
           for t, b in ((0.01, 0.0), fitted)]
    return {"concepts": len(names), "concept_ece_monet": round(ece[0], 4),
            "concept_ece_calibrated": round(ece[1], 4)}


def _margins(trust, zs, features, pixels, paths):
    """(N,) log(OOD score / its threshold), each image against its modality's reference, as
    the app judges it, or log(skin score / its threshold) where the trust file's "not skin"
    check flags the image: above 0 the image is refused."""
    import torch

    from dermvlm.skincheck import imagenet_features_of
    from dermvlm.zeroshot import zeroshot_modality
    modalities = list(zip(*zeroshot_modality(zs, features)))
    skin = None
    if trust.skin is not None:
        imagenet = imagenet_features_of(paths, trust.skin.tower)
        modalities, skin = trust.judge_skin(modalities, imagenet), trust.skin.scores(imagenet)
    score, threshold = trust.scores(features, pixels, [m for m, _ in modalities])
    margin = torch.log(score.clamp_min(1e-9) / threshold)
    if skin is not None:
        margin = torch.maximum(margin, torch.log(skin.clamp_min(1e-9) / trust.skin.threshold))
    return margin


def evaluate(args):
    import torch

    from dermvlm.clip.model import load_model
    from dermvlm.imaging import eval_transform
    from dermvlm.labelled import concept_labels, labelled_images
    from dermvlm.trust import TrustModel, encode_images
    from dermvlm.zeroshot import ZeroShot, binary_auroc
    if not (args.model and args.id and args.ood):
        raise DermvlmError("--model, at least one --id and --ood are needed")
    trust = TrustModel.load(args.model)
    if trust is None:
        raise DermvlmError(f"{args.model}: no trust.json; fit one with python -m "
                           "train.fit_trust")
    model, cfg, tokenizer = load_model(args.model)
    zs, transform = ZeroShot(model, tokenizer), eval_transform(cfg["vision_cfg"]["image_size"])
    result, id_scores = {"model": args.model, "threshold": trust.settings.threshold,
                         "modalities": trust.settings.modalities, "in_distribution": {}}, []
    for spec in args.id:
        items = labelled_images(spec)
        features, pixels, kept = encode_images(zs, transform, [p for p, _ in items])
        margins = _margins(trust, zs, features, pixels, kept)
        id_scores.append(margins)
        label_of = dict(items)
        result["in_distribution"][spec] = {
            "n": len(kept), "refused": round(float((margins > 0).float().mean()), 4),
            **calibration(zs, features, [label_of[p] for p in kept], trust),
            **concept_calibration(zs, features, kept, concept_labels(spec), trust)}
    ood = [str(p) for p in sorted(Path(args.ood).iterdir())]
    features, pixels, kept = encode_images(zs, transform, ood)
    ood_margins = _margins(trust, zs, features, pixels, kept)
    inside = torch.cat(id_scores)
    result["ood"] = {"folder": args.ood, "n": len(kept),
                     "caught": round(float((ood_margins > 0).float().mean()), 4),
                     "missed": [Path(p).name for p, s in zip(kept, ood_margins) if s <= 0]}
    result["auroc"] = round(binary_auroc(torch.cat([inside, ood_margins]).tolist(),
                                         [0] * len(inside) + [1] * len(ood_margins)), 4)
    result["refused_all_in_distribution"] = round(float((inside > 0).float().mean()), 4)
    return result


def main(argv=None):
    parser = OneLineParser(prog="python -m eval.ood", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="CLIP model folder with trust.json")
    parser.add_argument("--id", action="append", default=[],
                        help="held-out in-distribution image set (repeatable)")
    parser.add_argument("--ood", help="folder of out-of-distribution images")
    parser.add_argument("--make-nonskin", metavar="DIR",
                        help="write the non-skin image set to DIR and stop")
    parser.add_argument("--make-package-nonskin", metavar="DIR",
                        help="write the second non-skin set (images installed packages ship) "
                        "to DIR and stop")
    parser.add_argument("--out", help="write the results JSON here")
    args = parser.parse_args(argv)
    if args.make_package_nonskin:
        made = make_package_nonskin(args.make_package_nonskin)
        print(f"{len(made)} images in {args.make_package_nonskin}")
        return 0
    if args.make_nonskin:
        print(f"{len(make_nonskin(args.make_nonskin))} images in {args.make_nonskin}")
        return 0
    return print_result("eval.ood", lambda: evaluate(args), args.out)


if __name__ == "__main__":
    sys.exit(main())
