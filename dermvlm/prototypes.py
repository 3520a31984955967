"""Class prototypes: text-initialised classifier weights fitted on training images' features.

Zero-shot, a label's classifier weight is the mean embedding of its prompt ensemble. For the
diagnoses that the training images name, `train.fit_prototypes` fits a prototype: the text
weight plus an offset, trained with class-balanced cross-entropy on the frozen image features
of the training splits (each image and its mirror image), each image scored only against the
labels of its own set (HAM10000's 7, isic9's 9, ...: the sets disagree where their label
spaces overlap), and the number of steps chosen on the val splits. `ZeroShot` then uses a
label's prototype in place of its text weight when the prompts are DermLIP's; any other label
or template set stays zero-shot. Saved beside the model as prototypes.safetensors, which
open_clip ignores (the folder stays a vanilla open_clip folder). Prototypes fitted for one
modality (their metadata's "modality", train.fit_prototypes --modality) apply only to images
the zero-shot prompts judge that modality.

    weights = fit_prototypes(text, groups, steps=400)        # text (C, D); groups below
    save_prototypes(folder, names, weights, {"fitted_on": ...})
"""
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from dermvlm.errors import DermvlmError

PROTOTYPES_FILE = "prototypes.safetensors"
LOGIT_SCALE = 100.0         # DermLIP's, as ZeroShot.logits


def fit_prototypes(text, groups, steps, lr=1e-3):
    """(C, D) prototypes from (C, D) text weights and groups [(features (N, D), targets (N,)
    indices into the C labels, space: the label indices the group is scored against)]: Adam
    on the mean over groups of each group's class-balanced cross-entropy (every class of a
    group weighs the same)."""
    delta = torch.zeros_like(text, requires_grad=True)
    optimizer = torch.optim.Adam([delta], lr=lr)
    prepared = []
    for features, targets, space in groups:
        local = torch.tensor([space.index(int(t)) for t in targets])
        counts = torch.bincount(local, minlength=len(space)).float().clamp(min=1)
        weight = 1.0 / counts[local]
        prepared.append((features.float(), local, torch.tensor(space), weight / weight.sum()))
    for _ in range(steps):
        weights = F.normalize(text + delta, dim=-1)
        loss = sum((F.cross_entropy(LOGIT_SCALE * x @ weights[space].T, y, reduction="none")
                    * w).sum() for x, y, space, w in prepared) / len(prepared)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return F.normalize((text + delta).detach(), dim=-1)


def save_prototypes(folder, names, weights, info):
    """Write {label: (D,) prototype} and `info` (JSON, in the file's metadata)."""
    tensors = {name: weights[i].contiguous() for i, name in enumerate(names)}
    save_file(tensors, Path(folder) / PROTOTYPES_FILE, metadata={"info": json.dumps(info)})


def load_prototypes(folder):
    """{label: (D,) unit prototype} of a model folder, or None when it has none."""
    path = Path(folder) / PROTOTYPES_FILE
    if not path.is_file():
        return None
    try:
        tensors = load_file(path)
    except Exception as exc:   # a truncated or altered file: one line, not a trace
        raise DermvlmError(f"{path}: unreadable prototypes ({type(exc).__name__}: {exc})")
    return {name: F.normalize(t.float(), dim=-1) for name, t in tensors.items()}


def prototypes_info(folder):
    """The metadata saved with a folder's prototypes ({} without)."""
    from safetensors import safe_open
    path = Path(folder) / PROTOTYPES_FILE
    if not path.is_file():
        return {}
    with safe_open(path, "pt") as f:
        return json.loads((f.metadata() or {}).get("info", "{}"))
