"""Knowing when not to answer: an out-of-distribution (OOD) score for every image, a
threshold fixed on held-out data, and a temperature that calibrates the diagnosis
probabilities. Stored beside a CLIP model folder as trust.json + trust.safetensors.

The OOD score has two parts, each the distance to the nearest training image (deep k-NN,
Sun et al. 2022, k = 1), divided by that part's 97.5th percentile on held-out in-distribution
images, and the score is the larger of the two (> 1: further from the training images than
almost every held-out one):
- features: 1 - cosine to the nearest reference image in the CLIP image space;
- pixels: Euclidean distance between square-rooted colour and edge histograms (a Hellinger
  distance). The tower is trained on skin images only and maps a blank page, a gradient or a
  document close to smooth skin; colour and texture statistics tell those apart.

Each modality has its own reference and threshold where the fit had enough images of it: an
image the zero-shot model judges a clinical photograph is compared with the clinical training
photographs only, a dermoscopic one with the dermoscopic ones (a phone photo is always far
from dermoscopy; that says nothing about whether the model knows it).

A clinical photograph is answered only when its top diagnosis is one the model earned on real
held-out clinical photographs (`clinical_answerable`, fitted by train.fit_trust); otherwise it
is out of scope: the reply says so instead of giving the nearest wrong name. It is also named
only at a calibrated top probability at least `clinical_min_confidence`, the lowest at which the
held-out clinical photographs named so were right often enough (selective classification,
Geifman & El-Yaniv 2017); below it the reply says the model is not sure enough to name it.
These clinical rules also hold for an image judged dermoscopic less surely than held-out real
dermoscopy nearly always is: a phone photo mistaken for dermoscopy must not escape them.

Each judged modality can have its own temperature too (`modality_temperature`, fitted on real
held-out images of it): the model is less often right on phone photos than on dermoscopy, so
one temperature fitted mostly on dermoscopy makes phone-photo answers overconfident.
"""
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from dermvlm.errors import DermvlmError
from dermvlm.skincheck import NOT_SKIN, NOT_SKIN_MESSAGE, SkinCheck, imagenet_features
from dermvlm.vocab import MODALITIES

TRUST_JSON, TRUST_WEIGHTS = "trust.json", "trust.safetensors"
ABSTAIN_MESSAGE = ("This image does not look like the skin images this model was trained on, "
                   "so no diagnosis is given.")
OUT_OF_SCOPE_MESSAGE = ("This photo seems to show a condition this model is not trained to "
                        "judge on clinical photographs, so no diagnosis is given. Please show "
                        "it to a dermatologist or your doctor.")
LOW_CONFIDENCE_MESSAGE = ("The model is not sure enough to name what this photo shows: on "
                          "clinical photographs it names a condition only at a confidence at "
                          "which it was right {share} of the time on held-out photos. Please "
                          "show it to a dermatologist or your doctor.")
REVIEW_NOTE = (" The chance the model gives a malignant or premalignant condition reaches the "
               "level at which it asks for a review, so do not wait: have it examined within "
               "weeks.")
RESEMBLES_RISKY_NOTE = (" What it most resembles is a malignant or premalignant condition, so "
                        "do not wait: have it examined within weeks.")
QUANTILE = 0.975        # of held-out in-distribution scores: the scale of each part
MIN_MODALITY_IMAGES = 20    # per-modality reference and threshold only with this many of each
MIN_TEMPERATURE_IMAGES = 30     # a modality's own temperature only with this many held-out images


def image_statistics(image, bins=6, edge_bins=8):
    """(bins^3 + edge_bins,) square-rooted colour histogram (RGB, 64 x 64 thumbnail) and
    histogram of grey-level gradient magnitudes: pixel statistics a skin photo shares."""
    a = np.asarray(image.convert("RGB").resize((64, 64)), dtype=np.float32) / 255
    q = np.minimum((a * bins).astype(int), bins - 1)
    colour = np.bincount(((q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]).ravel(),
                         minlength=bins ** 3)
    grey = a.mean(2)
    gradients = np.concatenate([np.abs(np.diff(grey, axis=0)).ravel(),
                                np.abs(np.diff(grey, axis=1)).ravel()])
    edges = np.histogram(gradients, bins=edge_bins, range=(0, 0.4))[0]
    return torch.tensor(np.concatenate([np.sqrt(colour / colour.sum()),
                                        np.sqrt(edges / edges.sum())]), dtype=torch.float32)


@dataclass
class TrustSettings:
    feature_scale: float        # 97.5th percentile of held-out feature distances
    pixel_scale: float          # the same for pixel statistics
    threshold: float            # combined score above which an answer is withheld
    temperature: float          # diagnosis logits are divided by it before the softmax
    fitted_on: dict             # what the reference, validation and temperature sets were
    concept_temperature: float = 0.01   # MONET's score: T = 0.01, no bias; both are fitted
    concept_bias: float = 0.0           # (Platt scaling) where concept labels exist
    # P(malignant or premalignant), summed over the ontology's calibrated diagnosis
    # probabilities, at or above which an image is flagged (concern raised to at least
    # moderate); fitted on held-out real images for a target sensitivity. None: the top
    # diagnosis alone decides.
    malignancy_threshold: float | None = None
    # {modality: {"feature_scale", "pixel_scale", "threshold", "reference", "validation"}}:
    # the modalities with a reference and threshold of their own; others use the ones above
    modalities: dict | None = None
    # ontology conditions a clinical photograph may be answered with (None: no restriction)
    clinical_answerable: list | None = None
    # {"tower", "components", "threshold", "reference", "validation"} of the "not skin" check
    # (dermvlm.skincheck); None: every image is judged dermoscopic or clinical
    skin_check: dict | None = None
    # {modality: temperature} for the judged modalities with a temperature of their own
    # (fitted on real held-out images of that modality); the others use `temperature`
    modality_temperature: dict | None = None
    # calibrated top probability below which a clinical photograph is not named (None: any)
    clinical_min_confidence: float | None = None
    # modality confidence below which an image judged dermoscopic is answered under the
    # clinical rules (the 1st percentile of held-out real dermoscopy judged so; None: never)
    dermoscopic_min_modality_confidence: float | None = None


def abstain_message(verdict):
    """What to say instead of a diagnosis for an abstained verdict."""
    return verdict.get("message") or ABSTAIN_MESSAGE


def ood_note(verdict):
    """' (out-of-distribution score S, threshold T)' where the score is why the model
    abstained; '' for an in-distribution photo withheld as out of scope."""
    if verdict["ood_score"] <= verdict["threshold"]:
        return ""
    return (f" (out-of-distribution score {verdict['ood_score']:.2f}, threshold "
            f"{verdict['threshold']:.2f})")


class TrustModel:
    """OOD scoring and calibration for one CLIP model (features from its image tower)."""

    def __init__(self, settings, reference_features, reference_pixels, reference_modality=None,
                 skin=None):
        self.settings = settings
        self.skin = skin            # dermvlm.skincheck.SkinCheck or None
        # kept at the fp16 precision they are saved in, so a saved model scores the same
        self.reference_features = reference_features.half().float()   # (N, D), unit norm
        self.reference_pixels = reference_pixels.half().float()       # (N, P)
        # (N,) index into vocab.MODALITIES, -1 where not known
        self.reference_modality = (torch.full((len(reference_features),), -1, dtype=torch.long)
                                   if reference_modality is None else reference_modality.long())

    def parts(self, features, pixels, modality=None):
        """(feature distance (B,), pixel distance (B,)) to the nearest reference image (of
        `modality` only, when given)."""
        references, reference_pixels = self.reference_features, self.reference_pixels
        if modality is not None:
            keep = self.reference_modality == MODALITIES.index(modality)
            references, reference_pixels = references[keep], reference_pixels[keep]
        feature = 1 - (features.float() @ references.T).max(1).values
        pixel = torch.cdist(pixels.float(), reference_pixels).min(1).values
        return feature, pixel

    def _own(self, modality):
        """The modality's own settings, or None (the shared ones apply)."""
        return (self.settings.modalities or {}).get(modality)

    def scores(self, features, pixels, modalities=None):
        """((B,) OOD scores, (B,) thresholds): each image against its modality's reference
        and threshold where it has one of its own (`modalities`: a name per image)."""
        settings = self.settings
        feature, pixel = self.parts(features, pixels)
        score = torch.maximum(feature / settings.feature_scale, pixel / settings.pixel_scale)
        threshold = torch.full_like(score, settings.threshold)
        for name in set(modalities or ()):
            own = self._own(name)
            if own is None:
                continue
            rows = torch.tensor([m == name for m in modalities])
            feature, pixel = self.parts(features[rows], pixels[rows], name)
            score[rows] = torch.maximum(feature / own["feature_scale"],
                                        pixel / own["pixel_scale"])
            threshold[rows] = own["threshold"]
        return score, threshold

    def score(self, features, pixels):
        """(B,) OOD score against the shared reference; above `threshold`: out of
        distribution (`scores` gives each image its modality's)."""
        return self.scores(features, pixels)[0]

    def verdict(self, features, pixels, modalities=None):
        """[{"ood_score", "threshold", "abstained"}] per image."""
        score, threshold = self.scores(features, pixels, modalities)
        return [{"ood_score": round(float(s), 4), "threshold": round(float(t), 4),
                 "abstained": bool(s > t)} for s, t in zip(score, threshold)]

    def strict(self, modality, modality_confidence=None):
        """Whether an image is answered under the clinical rules: a clinical photograph, or
        one judged dermoscopic less surely than held-out real dermoscopy nearly always is
        (`dermoscopic_min_modality_confidence`): when unsure which it is, the stricter rules."""
        floor = self.settings.dermoscopic_min_modality_confidence
        return modality == "clinical" or (
            modality == "dermoscopic" and floor is not None and
            modality_confidence is not None and modality_confidence < floor)

    def in_scope(self, verdict, modality, top, confidence=None, modality_confidence=None):
        """The verdict, turned into an abstention when an image under the clinical rules
        (`strict`) has a top diagnosis the model may not answer clinical photographs with (out
        of scope), or a calibrated top probability `confidence` below
        `clinical_min_confidence`."""
        settings = self.settings
        if verdict["abstained"] or not self.strict(modality, modality_confidence):
            return verdict
        if settings.clinical_answerable is not None and top not in settings.clinical_answerable:
            return {**verdict, "abstained": True, "reason": "out of scope",
                    "message": OUT_OF_SCOPE_MESSAGE}
        if settings.clinical_min_confidence is not None and confidence is not None and \
                confidence < settings.clinical_min_confidence:
            share = (settings.fitted_on.get("clinical_min_confidence") or {}).get("precision")
            message = LOW_CONFIDENCE_MESSAGE.format(share=f"{share:.0%}" if share else
                                                    "nearly all")
            return {**verdict, "abstained": True, "reason": "low confidence",
                    "message": message}
        return verdict

    def with_concern(self, verdict, malignancy_probability, top_risky=False):
        """An in-distribution photo the model does not name keeps its concern in words. Withheld
        for low confidence (its top diagnosis is one the model may name): REVIEW_NOTE where its
        P(malignant or premalignant) reaches the operating point (`malignancy_threshold`),
        which was fitted on such lesions. Out of scope: RESEMBLES_RISKY_NOTE where its
        withheld top diagnosis is malignant or premalignant (`top_risky`); the operating point
        was not fitted on the conditions such photos show, and would send many benign ones to
        a dermatologist. Images out of distribution or not skin get nothing: their
        probabilities mean nothing."""
        reason, threshold = verdict.get("reason"), self.settings.malignancy_threshold
        if reason == "low confidence" and threshold is not None and \
                malignancy_probability >= threshold:
            return {**verdict, "message": verdict["message"] + REVIEW_NOTE}
        if reason == "out of scope" and top_risky:
            return {**verdict, "message": verdict["message"] + RESEMBLES_RISKY_NOTE}
        return verdict

    def judge_skin(self, modalities, imagenet):
        """`modalities` ([(name, confidence)] per image) with ("not skin", its confidence)
        where the skin check flags the image's (N, F) ImageNet features (dermvlm.skincheck);
        unchanged without a check."""
        if self.skin is None:
            return list(modalities)
        return [(NOT_SKIN, confidence) if not_skin else judged for judged, (not_skin, confidence)
                in zip(modalities, self.skin.judge(imagenet))]

    def temperatures(self, modalities):
        """(B, 1) temperature per image: its judged modality's own, else the shared one."""
        own = self.settings.modality_temperature or {}
        return torch.tensor([[own.get(m, self.settings.temperature)] for m in modalities])

    def calibrated(self, logits, modalities=None):
        """Softmax of the (B, C) diagnosis logits at the fitted temperature: each image's
        judged modality's own where given and fitted."""
        if modalities is None:
            return (logits / self.settings.temperature).softmax(-1)
        return (logits / self.temperatures(modalities)).softmax(-1)

    def save(self, folder):
        folder = Path(folder)
        save_file({"reference_features": self.reference_features.half().contiguous(),
                   "reference_pixels": self.reference_pixels.half().contiguous(),
                   "reference_modality": self.reference_modality.to(torch.int8).contiguous(),
                   **(self.skin.tensors() if self.skin else {})},
                  folder / TRUST_WEIGHTS)
        (folder / TRUST_JSON).write_text(json.dumps(asdict(self.settings), indent=1))
        return folder

    @classmethod
    def load(cls, folder):
        """The model folder's TrustModel, or None when it has none (no OOD check then)."""
        folder = Path(str(folder).removeprefix("local-dir:"))
        if not (folder / TRUST_JSON).is_file():
            return None
        try:
            settings = TrustSettings(**json.loads((folder / TRUST_JSON).read_text()))
            tensors = load_file(folder / TRUST_WEIGHTS)
        except (OSError, TypeError, ValueError) as exc:
            raise DermvlmError(f"{folder}: unreadable {TRUST_JSON} / {TRUST_WEIGHTS}: {exc}")
        skin = settings.skin_check
        return cls(settings, tensors["reference_features"], tensors["reference_pixels"],
                   tensors.get("reference_modality"),
                   SkinCheck.from_tensors(tensors, skin["threshold"], skin["tower"])
                   if skin else None)


def assess(zs, trust, features, images):
    """([(modality, confidence)], [verdict or None]) per image, as the app judges it: "not
    skin" where the trust file's skin check flags the image (its verdict abstains with
    NOT_SKIN_MESSAGE), else dermoscopic or clinical by the zero-shot prompts, and the OOD
    verdict against that modality's reference. Without a trust file: the prompts' modality
    and no verdicts. (features (N, D) of the N PIL `images`.)"""
    from dermvlm.zeroshot import zeroshot_modality
    modalities = list(zip(*zeroshot_modality(zs, features)))
    if trust is None:
        return modalities, [None] * len(images)
    if trust.skin is not None:
        modalities = trust.judge_skin(modalities, imagenet_features(images, trust.skin.tower))
    pixels = torch.stack([image_statistics(im) for im in images])
    verdicts = trust.verdict(features, pixels, [m for m, _ in modalities])
    return modalities, [{**v, "abstained": True, "reason": NOT_SKIN, "message": NOT_SKIN_MESSAGE}
                        if m == NOT_SKIN else v for v, (m, _) in zip(verdicts, modalities)]


def concept_scaling(trust):
    """ZeroShot.concept_scores keyword arguments: the fitted scaling, or MONET's without a
    trust file."""
    if trust is None:
        return {"temperature": 0.01, "bias": 0.0}
    return {"temperature": trust.settings.concept_temperature,
            "bias": trust.settings.concept_bias}


def fit_malignancy_threshold(scores, positive, sensitivity=0.95, bound=False):
    """The highest threshold on P(malignant or premalignant) that flags at least
    `sensitivity` of the `positive` images: missing a cancer costs more than a review.
    bound: flag enough that the Wilson 95 % lower bound of the flagged share reaches
    `sensitivity` (new images then meet it with confidence, not just on average)."""
    from dermvlm.bench.metrics import wilson_interval
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    if not positive.any():
        raise DermvlmError("no malignant or premalignant image to fit the threshold on")
    ranked = np.sort(scores[positive])                 # ranked[i:] is flagged at ranked[i]
    n = len(ranked)
    if not bound:
        return float(ranked[int(np.floor((1 - sensitivity) * n))])
    for i in range(n - 1, -1, -1):
        if wilson_interval(n - i, n, digits=None)[0] >= sensitivity:
            return float(ranked[i])
    return float(ranked[0])                            # too few images: flag every one


def fit_temperature(logits, targets, steps=200):
    """The temperature minimising the negative log-likelihood of `targets` (Guo et al. 2017),
    fitted in log space."""
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=steps)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss
    optimizer.step(closure)
    return float(log_t.detach().exp())


def fit_modality_temperatures(logits, targets, modalities, min_images=MIN_TEMPERATURE_IMAGES):
    """({modality: temperature}, {modality: images}) from (N, C) held-out diagnosis `logits`,
    their (N,) `targets` and each image's judged modality: a temperature for each modality
    with at least `min_images` images (Guo et al. 2017, per group)."""
    temperatures, counts = {}, {}
    for name in sorted(set(modalities)):
        rows = torch.tensor([m == name for m in modalities])
        counts[name] = int(rows.sum())
        if counts[name] >= min_images:
            temperatures[name] = fit_temperature(logits[rows], targets[rows])
    return temperatures, counts


def fit_concept_scaling(margins, labels, steps=300):
    """(temperature T, bias b) of concept scores, the mean over templates of
    sigmoid((margin - b) / T) (Platt scaling of MONET's score, which is T = 0.01, b = 0),
    minimising the binary negative log-likelihood of `labels` (margins (N, K, templates),
    labels (N, K) of 0/1). One pair for all concepts, so unseen concepts are scaled too."""
    log_t = torch.tensor([float(np.log(0.01))], requires_grad=True)
    bias = torch.zeros(1, requires_grad=True)
    # a line search: a fixed step can overshoot to a temperature whose scores are NaN
    optimizer = torch.optim.LBFGS([log_t, bias], lr=0.1, max_iter=steps,
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        scores = torch.sigmoid((margins - bias) / log_t.exp()).mean(-1).clamp(1e-6, 1 - 1e-6)
        loss = torch.nn.functional.binary_cross_entropy(scores, labels.float())
        loss.backward()
        return loss
    optimizer.step(closure)
    return float(log_t.detach().exp()), float(bias.detach())


def binary_calibration_error(probs, labels, bins=15):
    """ECE of per-concept probabilities: bin-weighted |observed rate - probability|."""
    from dermvlm.bench.metrics import expected_calibration_error as ece
    return ece(probs.flatten().tolist(), labels.flatten().float().tolist(), bins)


def expected_calibration_error(probs, targets, bins=15):
    """ECE of the top-1 confidence of (N, C) probabilities: bin-weighted
    |accuracy - confidence| over equal-width confidence bins."""
    from dermvlm.bench.metrics import expected_calibration_error as ece
    confidence, predicted = probs.max(1)
    return ece(confidence.tolist(), (predicted == targets).float().tolist(), bins)


def fit_trust(reference, validation, logits, targets, fitted_on, reference_modality=None,
              validation_modality=None):
    """A TrustModel from (features, pixels) of the reference (training) images and of held-out
    in-distribution validation images, with the temperature fitted on validation diagnosis
    `logits` (N, C) and their `targets` (N,). With `reference_modality` ((N,) index into
    vocab.MODALITIES, -1 unknown) and `validation_modality` (a name per validation image, as
    the zero-shot model judges it), each modality with MIN_MODALITY_IMAGES of both gets its
    own scales and threshold."""
    model = TrustModel(TrustSettings(1.0, 1.0, 1.0, 1.0, fitted_on), *reference,
                       reference_modality)
    for key, value in _fit_scales(*model.parts(*validation)).items():
        setattr(model.settings, key, value)                  # feature_scale, pixel_scale, threshold
    model.settings.temperature = fit_temperature(logits, targets)
    own = {}
    for name in MODALITIES if validation_modality is not None else ():
        rows = torch.tensor([m == name for m in validation_modality])
        n_reference = int((model.reference_modality == MODALITIES.index(name)).sum())
        if min(int(rows.sum()), n_reference) < MIN_MODALITY_IMAGES:
            continue
        own[name] = {**_fit_scales(*model.parts(validation[0][rows], validation[1][rows],
                                                name)),
                     "reference": n_reference, "validation": int(rows.sum())}
    model.settings.modalities = own or None
    return model


def _fit_scales(feature, pixel):
    """{feature_scale, pixel_scale, threshold} from held-out distances: each part's QUANTILE,
    then the QUANTILE of the larger scaled part (the score)."""
    feature_scale = float(feature.quantile(QUANTILE))
    pixel_scale = float(pixel.quantile(QUANTILE))
    score = torch.maximum(feature / feature_scale, pixel / pixel_scale)
    return {"feature_scale": feature_scale, "pixel_scale": pixel_scale,
            "threshold": float(score.quantile(QUANTILE))}


def fit_answerable(predicted, truth, min_images=3, min_f1=0.5):
    """The conditions whose top-1 F1 on held-out images reaches `min_f1` with at least
    `min_images` images of them: [{"condition", "images", "precision", "recall", "f1"}] for
    every condition seen, and the sorted list of the answerable ones."""
    rows, answerable = [], []
    for name in sorted(set(truth)):
        hits = sum(p == t == name for p, t in zip(predicted, truth))
        said, true = predicted.count(name), truth.count(name)
        precision, recall = hits / max(said, 1), hits / true
        f1 = 2 * precision * recall / max(precision + recall, 1e-9)
        rows.append({"condition": name, "images": true, "precision": round(precision, 3),
                     "recall": round(recall, 3), "f1": round(f1, 3)})
        if true >= min_images and f1 >= min_f1:
            answerable.append(name)
    return rows, answerable


def fit_min_confidence(confidence, correct, precision=0.9):
    """The lowest confidence c at which the answers given at confidence >= c (top-1
    probabilities of held-out images, and whether each was right) are right at least
    `precision` of the time; None when no c reaches it (the model then names nothing)."""
    ranked = sorted(zip(confidence, correct), key=lambda pair: -pair[0])
    best, hits = None, 0
    for i, (c, right) in enumerate(ranked):
        hits += bool(right)
        tied = i + 1 < len(ranked) and ranked[i + 1][0] == c    # a threshold keeps all ties
        if not tied and hits / (i + 1) >= precision:
            best = float(c)
    return best


def encode_images(zeroshot, transform, paths, batch_size=128, progress=False):
    """(CLIP features (N, D), pixel statistics (N, P), kept paths) for image files; files that
    are not usable images are left out (they could not be answered either)."""
    from tqdm import tqdm

    from dermvlm.imaging import try_open_image
    features, pixels, kept = [], [], []
    for start in tqdm(range(0, len(paths), batch_size), desc="images", disable=not progress):
        images = [(p, im) for p in paths[start:start + batch_size]
                  if (im := try_open_image(p)) is not None]
        if images:
            features.append(zeroshot.encode_images(torch.stack([transform(im)
                                                                for _, im in images])))
            pixels += [image_statistics(im) for _, im in images]
            kept += [str(p) for p, _ in images]
    if not features:        # the joint space's width (a timm tower has no output_dim)
        features = [torch.empty(0, zeroshot.classifier(["skin"]).shape[0])]
    return (torch.cat(features),
            torch.stack(pixels) if pixels else torch.empty(0), kept)
