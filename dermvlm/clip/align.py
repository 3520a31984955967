"""Staged alignment of a pretrained convolutional tower (EfficientNet-Lite) with a locked
text tower, on cached features.

The trunk is cut at a block (dermvlm.clip.cache): everything before the cut is frozen and run
once per image view; the stages train what comes after on those cached tensors.

- "frozen": only the CLIP head (pooled 1280-d -> joint space) learns.
- "last":   the blocks after the cut, the head conv and the CLIP head learn (BN statistics
            stay ImageNet's: batches here are small and class-balanced, not the data's mix).

Each image belongs to one labelled set (ham10000, isic2017, isic9, pad-ufes-20, synthderm).
The loss has two parts, both against the locked text tower:
- per-set prompt classification: cross-entropy over that set's own classes, each class the
  mean embedding of DermLIP's prompt ensemble (what zero-shot classification computes), so
  "pigmented benign keratosis" (HAM) and "seborrhoeic keratosis" (ISIC 2017) never compete;
- caption contrast: InfoNCE between images and a sampled caption of each. A real set's
  captions say only its label, so every image of the same set and class counts as a positive;
  SynthDerm's describe the image itself (colour, lesion type, ...), so there only the image's
  own caption (or the very same text) is.
Sampling is class-balanced within each set, with a fixed share per set.
"""
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from dermvlm.clip.cache import cut_to_pool
from dermvlm.zeroshot import ZeroShot


@dataclass
class StageConfig:
    steps: int = 600            # optimizer steps
    batch_size: int = 128
    lr: float = 1e-3            # the CLIP head's rate
    trunk_lr: float = 1e-4      # the trunk's blocks after the cut ("last" stage)
    weight_decay: float = 0.05
    caption_weight: float = 0.5  # weight of the caption contrast beside the prompt loss
    seed: int = 0


class TextTargets:
    """Per-set class embeddings (D, C) and the caption embedding of every record."""

    def __init__(self, model, tokenizer, sets, captions):
        zs = ZeroShot(model, tokenizer, batch_size=256)
        self.classifiers = {name: zs.classifier(list(classes)) for name, classes in sets.items()}
        unique = sorted({c for caps in captions for c in caps})
        bar = tqdm(range(0, len(unique), 1024), desc="encoding captions", unit="k")
        embedded = {}
        for i in bar:
            chunk = unique[i:i + 1024]
            embedded.update(zip(chunk, zs.encode_texts(chunk)))
        self.index = {c: i for i, c in enumerate(unique)}
        self.table = torch.stack([embedded[c] for c in unique])     # (U, D)
        self.caption_ids = [[self.index[c] for c in caps] for caps in captions]


def sampling_weights(set_names, labels, shares):
    """Per-record probability: each set gets its share, split equally over its classes,
    then equally over each class's records."""
    set_names, labels = np.asarray(set_names), np.asarray(labels)
    weights = np.zeros(len(labels))
    present = {s: shares[s] for s in shares if (set_names == s).any()}
    total = sum(present.values())
    for name, share in present.items():
        in_set = set_names == name
        classes = np.unique(labels[in_set])
        for label in classes:
            rows = in_set & (labels == label)
            weights[rows] = share / total / len(classes) / rows.sum()
    return weights / weights.sum()


OWN_CAPTION_SETS = ("synthderm",)     # sets whose captions describe the one image


def align_loss(image, targets, set_names, class_ids, caption_rows, scale, caption_weight):
    """image (B, D) normalised; class_ids (B,) within each set; caption_rows (B,) rows of
    targets.table. Prompt cross-entropy per set + multi-positive caption InfoNCE."""
    prompt, count = 0.0, 0
    for name in dict.fromkeys(set_names):
        rows = [i for i, s in enumerate(set_names) if s == name]
        logits = scale * image[rows] @ targets.classifiers[name]          # (b, C)
        prompt = prompt + F.cross_entropy(logits, class_ids[rows], reduction="sum")
        count += len(rows)
    prompt = prompt / count
    captions = targets.table[caption_rows]                                 # (B, D)
    key = [f"caption/{r}" if s in OWN_CAPTION_SETS else f"{s}/{c}"
           for s, c, r in zip(set_names, class_ids.tolist(), caption_rows.tolist())]
    key_ids = {k: i for i, k in enumerate(dict.fromkeys(key))}
    key = torch.tensor([key_ids[k] for k in key], device=image.device)
    same = (key[:, None] == key[None, :]).float()                           # (B, B)
    logits = scale * image @ captions.T                                    # (B, B)
    i2t = -(same / same.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    t2i = -(same / same.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean()
    return prompt + caption_weight * (i2t + t2i) / 2, float(prompt.detach())


def train_stage(model, cut, trainable, inputs, batch_fn, targets, meta, cfg, progress=True):
    """Train `trainable` parameters for cfg.steps. inputs: (N, V, ...) cached arrays;
    batch_fn(x) -> (B, D) unnormalised image embeddings. meta: dict with set_names,
    class_ids, weights (per item) and rows (each item's row of `inputs`). Returns the loss
    curve."""
    rng = np.random.default_rng(cfg.seed)
    head_params = [p for p in model.visual.head.parameters()] + [model.logit_scale]
    trunk_params = [p for p in trainable if all(p is not h for h in head_params)]
    groups = [{"params": head_params, "lr": cfg.lr}]
    if trunk_params:
        groups.append({"params": trunk_params, "lr": cfg.trunk_lr})
    for p in model.parameters():
        p.requires_grad_(False)
    for group in groups:
        for p in group["params"]:
            p.requires_grad_(True)
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    base = [g["lr"] for g in optimizer.param_groups]
    curve = []
    bar = tqdm(range(cfg.steps), desc="align", disable=not progress)
    n_views = inputs.shape[1]
    for step in bar:
        warm = min(1.0, (step + 1) / 20)
        cosine = 0.5 * (1 + np.cos(np.pi * step / cfg.steps))
        for group, lr in zip(optimizer.param_groups, base):
            group["lr"] = lr * warm * cosine
        rows = np.sort(rng.choice(len(meta["weights"]), cfg.batch_size, p=meta["weights"]))
        views = rng.integers(0, n_views, len(rows))
        cached = meta["rows"][rows]             # an image held by several sets: one row
        x = torch.from_numpy(np.stack([inputs[r, v] for r, v in zip(cached, views)])).float()
        image = F.normalize(batch_fn(x), dim=-1)
        caption_rows = torch.tensor([targets.caption_ids[r][rng.integers(
            len(targets.caption_ids[r]))] for r in rows])
        scale = model.logit_scale.exp().clamp(max=100)
        loss, prompt = align_loss(image, targets, [meta["set_names"][r] for r in rows],
                                  torch.as_tensor(meta["class_ids"][rows]), caption_rows,
                                  scale, cfg.caption_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        curve.append(float(loss.detach()))
        if step % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(curve[-10:]):.3f}", prompt=f"{prompt:.3f}")
    for p in model.parameters():
        p.requires_grad_(False)
    return curve


@torch.no_grad()
def advance(trunk, cached, cut, to, batch_size=256, progress=True):
    """Run cached cut tensors (N, V, C, h, w) through the frozen blocks[cut:to]: (their
    float16 outputs (N, V, C', h', w'), the float32 pooled features (N, V, F) they lead to).
    Later stages train from block `to` on, so each view passes the frozen middle once."""
    trunk = trunk.eval()
    n, v = cached.shape[:2]
    flat, moved, pooled = n * v, None, np.zeros((n, v, trunk.num_features), dtype=np.float32)
    for lo in tqdm(range(0, flat, batch_size), desc="advancing", disable=not progress):
        idx = np.arange(lo, min(flat, lo + batch_size))
        x = torch.from_numpy(np.stack([cached[i // v, i % v] for i in idx])).float()
        for block in trunk.blocks[cut:to]:
            x = block(x)
        if moved is None:
            moved = np.zeros((n, v, *x.shape[1:]), dtype=np.float16)
        moved[idx // v, idx % v] = x.half().numpy()
        pooled[idx // v, idx % v] = cut_to_pool(trunk, x, to).numpy()
    return moved, pooled


@torch.no_grad()
def embed_cached(model, cached, cut, view=0, batch_size=128):
    """(N, D) normalised joint-space embeddings of one cached view."""
    trunk = model.visual.trunk.eval()
    rows = []
    for lo in range(0, len(cached), batch_size):
        x = torch.from_numpy(np.array(cached[lo:lo + batch_size, view])).float()
        rows.append(F.normalize(model.visual.head(cut_to_pool(trunk, x, cut)), dim=-1))
    return torch.cat(rows)
