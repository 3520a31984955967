"""Draw the ground-truth attributes of one SynthDerm image from the ontology.

Every image is a pure function of (seed, index): `sample_attributes(config, index)` seeds its own
generator, so any sample can be regenerated alone and a dataset is identical whatever the number
of worker processes.
"""
import dataclasses
import hashlib
from dataclasses import dataclass

import numpy as np

from dermvlm import vocab
from dermvlm.ontology import CONDITIONS_BY_NAME, SYNTH_CONDITIONS

# Field of view in mm, for size -> pixels. A single lesion is photographed closer up.
MM_ACROSS_IMAGE = {"clinical": 50.0, "clinical single": 25.0, "dermoscopic": 20.0}


@dataclass
class SampleAttributes:
    """Everything known about one rendered image; every other output is derived from this."""
    image_id: str
    index: int
    seed: int
    split: str
    condition: str
    hierarchy: list
    category: str
    malignancy: str
    urgency: str
    lesion_type: str
    colours: list
    border_regularity: str
    border_definition: str
    shape: str
    size: str
    size_mm: float
    count: str
    n_lesions: int
    distribution: str
    surface: str
    secondary: str
    body_site: str
    modality: str
    fitzpatrick: int
    artefacts: list
    image_quality: str
    age: int | None
    gender: str | None
    symptoms: list

    def to_dict(self):
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, row):
        return cls(**row)

    @property
    def fitzpatrick_group(self):
        return vocab.fitzpatrick_group(self.fitzpatrick)


def sample_seed(seed, index):
    """Independent 64-bit seed per (dataset seed, image index)."""
    digest = hashlib.blake2b(f"synthderm:{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _choice(rng, weights):
    values = list(weights)
    probs = np.asarray([weights[v] for v in values], dtype=np.float64)
    return values[rng.choice(len(values), p=probs / probs.sum())]


def holdout_pairs():
    """The (lesion type, primary colour) pairs the compositional hold-out keeps out of training.

    For each lesion type, one colour that some condition can actually pair with it, chosen by a
    fixed hash so the set never changes between runs or machines.
    """
    pairs = set()
    for lesion_type in vocab.LESION_TYPES:
        colours = sorted({c for cond in SYNTH_CONDITIONS if lesion_type in cond.lesion_types
                          for c in cond.colours})
        if len(colours) >= 2:  # keep at least one colour for training
            pick = int(hashlib.md5(lesion_type.encode()).hexdigest(), 16) % len(colours)
            pairs.add((lesion_type, colours[pick]))
    return frozenset(pairs)


def _artefacts_and_quality(rng, artefact_prob):
    artefacts = []
    if rng.random() < artefact_prob:
        n = 1 if rng.random() < 0.7 else 2
        artefacts = sorted(rng.choice(vocab.ARTEFACTS, size=n, replace=False).tolist(),
                           key=vocab.ARTEFACTS.index)
    if "blur" in artefacts or "low light" in artefacts:
        quality = "poor"
    elif "hair" in artefacts or "glare" in artefacts:
        quality = "acceptable"
    else:
        quality = "good"
    return artefacts, quality


def _size_range(size, lesion_type):
    """The condition's size class narrowed to what the lesion type is by definition (a
    "small" patch is a macule): their overlap, else the end of the type's range nearest it."""
    low, high = vocab.SIZE_RANGES_MM[size]
    type_low, type_high = vocab.LESION_SIZE_MM.get(lesion_type, (low, high))
    if max(low, type_low) < min(high, type_high):
        return max(low, type_low), min(high, type_high)
    return (type_low, type_low + 3.0) if high <= type_low else (type_high - 2.0, type_high)


def _draw(config, index, rng, conditions):
    condition = conditions[rng.integers(len(conditions))]
    modality = "dermoscopic" if rng.random() < config.dermoscopic_fraction else "clinical"
    n_colours = int(rng.integers(condition.n_colours[0], condition.n_colours[1] + 1))
    colour_pool = dict(condition.colours)
    colours = []
    for _ in range(min(n_colours, len(colour_pool))):
        colour = _choice(rng, colour_pool)
        colours.append(colour)
        del colour_pool[colour]
    count = "single" if modality == "dermoscopic" else _choice(rng, condition.counts)
    low, high = vocab.COUNT_RANGES[count]
    if count == "single":
        distribution = "solitary"
    else:
        options = {k: v for k, v in condition.distributions.items() if k != "solitary"}
        distribution = _choice(rng, options or {"scattered": 1.0})
    size = _choice(rng, condition.sizes)
    fitzpatrick = int(rng.choice(config.skin_types))
    artefacts, quality = _artefacts_and_quality(rng, config.artefact_prob)
    lesion_type = _choice(rng, condition.lesion_types)
    border_regularity = _choice(rng, condition.border_regularity)
    border_definition = _choice(rng, condition.border_definition)
    shape = _choice(rng, condition.shapes)
    size_mm = round(float(rng.uniform(*_size_range(size, lesion_type))), 1)
    return SampleAttributes(
        image_id=f"synth_{config.seed}_{index:07d}", index=index, seed=config.seed,
        split=config.split, condition=condition.name, hierarchy=list(condition.hierarchy),
        category=condition.category, malignancy=condition.malignancy,
        urgency=condition.urgency, lesion_type=lesion_type, colours=colours,
        border_regularity=border_regularity, border_definition=border_definition,
        shape=shape, size=vocab.size_class(size_mm), size_mm=size_mm, count=count,
        n_lesions=int(rng.integers(low, high + 1)), distribution=distribution,
        surface=_choice(rng, condition.surfaces), secondary=_choice(rng, condition.secondary),
        body_site=_choice(rng, condition.sites), modality=modality, fitzpatrick=fitzpatrick,
        artefacts=artefacts, image_quality=quality,
        age=int(rng.integers(2, 90)) if rng.random() < 0.75 else None,
        gender=str(rng.choice(["male", "female"])) if rng.random() < 0.8 else None,
        symptoms=list(condition.symptoms) if rng.random() < 0.6 else [],
    )


def sample_attributes(config, index):
    """Ground truth for image `index` of a SynthDerm set described by a `SynthConfig`.

    `config.holdout == "compositional"` keeps the `holdout_pairs()` out of the train split and
    draws only them in the test split (a generalisation test on unseen combinations).
    """
    rng = np.random.default_rng(sample_seed(config.seed, index))
    conditions = ([CONDITIONS_BY_NAME[name] for name in config.conditions]
                  if config.conditions else list(SYNTH_CONDITIONS))
    pairs = holdout_pairs() if config.holdout == "compositional" else None
    if pairs is not None and config.split == "test":
        conditions = [c for c in conditions
                      if any((t, col) in pairs for t in c.lesion_types for col in c.colours)]
    for _ in range(1000):
        attrs = _draw(config, index, rng, conditions)
        if pairs is None:
            return attrs
        held_out = (attrs.lesion_type, attrs.colours[0]) in pairs
        if held_out == (config.split == "test"):
            return attrs
    raise RuntimeError(f"could not draw a sample for split {config.split!r} under the "
                       "compositional hold-out in 1000 tries")
