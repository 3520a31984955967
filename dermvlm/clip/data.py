"""Image-caption pairs for contrastive training, in a deterministic, resumable order.

Sources: a JSONL manifest (or a folder holding manifest.jsonl), a SynthDerm folder (its
derm1m.csv joined with attributes.jsonl), or webdataset shards (a folder of .tar). Every
sample's augmentation and caption choice depend only on (seed, epoch, index), and batch b of
epoch e is the same on every run, so a resumed run sees exactly the batches it would have seen.
"""
import json
import re
import sys
import zlib
from pathlib import Path

import numpy as np
import torch
from torchvision import transforms as T

from dermvlm.data.records import read_manifest
from dermvlm.errors import DataError
from dermvlm.imaging import MEAN, STD, try_open_image
from dermvlm.vocab import COLOURS, LESION_PLURALS, LESION_TYPES, fitzpatrick_group


def load_records(spec):
    """Records (absolute image paths) from a manifest, a manifest folder or a SynthDerm
    folder. Shards are streamed instead: see `ShardPairs`."""
    path = Path(spec)
    if path.is_dir() and (path / "attributes.jsonl").is_file():
        return synth_records(path)
    if path.is_dir() and (path / "manifest.jsonl").is_file():
        path = path / "manifest.jsonl"
    if path.is_file():
        return list(read_manifest(path))
    raise DataError(f"{spec}: expected a manifest .jsonl, a folder with manifest.jsonl, a "
                    "SynthDerm folder or a folder of .tar shards")


def synth_records(folder):
    """Records from a SynthDerm folder, with every ground-truth attribute in `meta`."""
    from dermvlm.data.derm1m import ontology_paths, record_from_row
    from dermvlm.data.tables import read_table
    folder = Path(folder)
    attrs = [json.loads(line) for line in open(folder / "attributes.jsonl")]
    paths = ontology_paths(folder / "ontology.json")
    records = []
    for (line, row), attr in zip(read_table(folder / "derm1m.csv", ("filename", "caption")),
                                 attrs):
        record = record_from_row(row, f"derm1m.csv:{line}", (str(folder), paths, attr["split"]))
        record.fitzpatrick = attr["fitzpatrick"]
        record.fitzpatrick_group = fitzpatrick_group(attr["fitzpatrick"])
        record.modality, record.body_site = attr["modality"], attr["body_site"]
        record.meta["attributes"] = attr
        records.append(record)
    return records


def train_transform(image_size):
    """Crops and flips only: colour is a label in dermatology, so no colour jitter."""
    return T.Compose([
        T.RandomResizedCrop(image_size, scale=(0.7, 1.0), ratio=(0.9, 1.1),
                            interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(), T.RandomVerticalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])


def real_train_transform(image_size):
    """Real photos: crops at several scales, the eight flips and right-angle turns (a lesion
    has no up), mild colour jitter (lighting and device differ; the diagnosis does not
    change), and some blur (phone focus). SynthDerm keeps `train_transform`: its colours are
    labels."""
    turn = T.RandomChoice([T.Lambda(lambda im, k=k: im.rotate(90 * k)) for k in range(4)])
    return T.Compose([
        T.RandomResizedCrop(image_size, scale=(0.5, 1.0), ratio=(0.8, 1.25),
                            interpolation=T.InterpolationMode.BICUBIC),
        turn, T.RandomHorizontalFlip(),
        T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.15, hue=0.02),
        T.RandomApply([T.GaussianBlur(5, sigma=(0.3, 1.5))], p=0.2),
        T.ToTensor(), T.Normalize(MEAN, STD)])


def sample_key(*parts):
    return zlib.crc32(repr(parts).encode())


SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")


def sentences_of(text):
    """The sentences of a caption that have at least two words."""
    return [s for s in SENTENCE_END.split(text.strip()) if len(s.split()) >= 2]


def drop_words(sentence, key, keep=0.5):
    """`sentence` with each word kept with probability `keep` (order kept, at least one word
    left, its final full stop restored): the text analogue of a random crop, so that a short
    prompt naming one attribute lands where trained texts were."""
    words = sentence.rstrip(".").split()
    rng = np.random.default_rng(key)
    kept = [w for w, k in zip(words, rng.random(len(words)) < keep) if k]
    kept = kept or [words[int(rng.integers(len(words)))]]
    return " ".join(kept) + "."


# Words a hard negative may swap, each for another of its family (a plural for a plural).
SWAP_FAMILIES = (LESION_TYPES, tuple(LESION_PLURALS.values()), COLOURS)
_SWAP_FAMILY = {term: family for family in SWAP_FAMILIES for term in family}
_SWAP_PATTERN = re.compile(r"(?<![\w-])(" + "|".join(
    re.escape(t) for t in sorted(_SWAP_FAMILY, key=len, reverse=True)) + r")(?![\w-])", re.I)


def hard_negative(text, key):
    """`text` with one lesion-type or colour word swapped for another of its family that the
    text does not name ("a red papule" -> "a red pustule"), chosen by the integer `key`; None
    when it names none. The NegCLIP recipe (Yuksekgonul et al. 2023): a caption that differs
    from the truth in one attribute word makes the image side attend to that attribute."""
    found = list(_SWAP_PATTERN.finditer(text))
    if not found:
        return None
    rng = np.random.default_rng(key)
    match = found[int(rng.integers(len(found)))]
    word = match.group(0)
    named = {m.group(0).lower() for m in found}
    others = [t for t in _SWAP_FAMILY[word.lower()] if t not in named]
    new = others[int(rng.integers(len(others)))]
    new = new[0].upper() + new[1:] if word[0].isupper() else new
    return text[:match.start()] + new + text[match.end():]


def pick_text(captions, key, sampling="captions"):
    """One training text for an image, chosen by the integer `key`. `captions`: one of its
    captions. `sentences`: half the time a single sentence of one (sentence sampling as in
    CXR-CLIP: short zero-shot prompts then land where short texts were trained, not between
    long multi-finding captions). `phrases`: a caption, a sentence, or a sentence with half
    its words dropped, a third of the time each."""
    captions = [c for c in captions if c] or [""]
    caption = captions[key % len(captions)]
    choice = {"captions": 0, "sentences": (key >> 8) % 2, "phrases": (key >> 20) % 3}[sampling]
    parts = sentences_of(caption)
    if choice == 0 or (choice == 1 and len(parts) < 2):
        return caption
    sentence = parts[(key >> 9) % len(parts)] if parts else caption
    return sentence if choice == 1 else drop_words(sentence, key >> 12)


class PairsDataset(torch.utils.data.Dataset):
    """Indexed by (epoch, index): returns (image tensor, caption, index); a sample whose image
    cannot be read yields None (skipped by `collate_pairs`, counted and reported)."""

    def __init__(self, records, transform, seed=0, sampling="captions"):
        self.records, self.transform, self.seed = records, transform, seed
        self.sampling = sampling

    def __len__(self):
        return len(self.records)

    def __getitem__(self, key):
        epoch, index = key
        record = self.records[index]
        image = try_open_image(record.image)
        if image is None:
            print(f"warning: skipping unreadable image {record.image} ({record.row_id})",
                  file=sys.stderr)
            return None
        torch.manual_seed(sample_key(self.seed, epoch, index))  # augmentation for this sample
        caption = pick_text(record.captions or [record.label or ""],
                            sample_key(self.seed, epoch, index, "caption"), self.sampling)
        return self.transform(image), caption, index


def collate_pairs(batch):
    kept = [b for b in batch if b is not None]
    images = torch.stack([b[0] for b in kept]) if kept else torch.empty(0)
    return images, [b[1] for b in kept], [b[2] for b in kept], len(batch) - len(kept)


class BatchOrder(torch.utils.data.Sampler):
    """Yields lists of (epoch, index) for micro-batches start, start+1, ... of this rank.

    Epoch e's order is a permutation seeded by (seed, e); a global micro-batch is split
    across ranks by striding, so the union over ranks is the single-process batch."""

    def __init__(self, n, micro_batch, seed, start=0, rank=0, world_size=1):
        if n < micro_batch:
            raise DataError(f"only {n} training pairs for a batch of {micro_batch}: lower "
                            "clip.batch_size or add data")
        self.n, self.micro_batch, self.seed = n, micro_batch, seed
        self.start, self.rank, self.world_size = start, rank, world_size
        self.per_epoch = n // micro_batch

    def __iter__(self):
        step = self.start
        while True:
            epoch, within = divmod(step, self.per_epoch)
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(self.n, generator=generator)
            batch = order[within * self.micro_batch:(within + 1) * self.micro_batch]
            yield [(epoch, int(i)) for i in batch[self.rank::self.world_size]]
            step += 1

    def __len__(self):
        return 2 ** 31


class ShardPairs(torch.utils.data.IterableDataset):
    """Webdataset shards in a fixed order per epoch, as (image, caption, index) micro-batches
    for one rank. Resuming skips the already-seen samples without decoding them."""

    def __init__(self, spec, transform, micro_batch, seed=0, start=0, rank=0, world_size=1,
                 sampling="captions"):
        from dermvlm.data.shards import shard_paths
        self.paths, self.transform, self.sampling = shard_paths(spec), transform, sampling
        self.micro_batch, self.seed, self.start = micro_batch, seed, start
        self.rank, self.world_size = rank, world_size

    def __iter__(self):
        from dermvlm.data.shards import decode_sample, iter_shard_samples
        skip, epoch, batch = self.start * self.micro_batch, 0, []
        while True:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = [self.paths[i] for i in torch.randperm(len(self.paths),
                                                           generator=generator)]
            for position, (_, group) in enumerate(iter_shard_samples(order)):
                if skip:
                    skip -= 1
                    continue
                batch.append((epoch, position, group))
                if len(batch) == self.micro_batch:
                    yield collate_pairs([self._decode(*item, decode_sample)
                                         for item in batch[self.rank::self.world_size]])
                    batch = []
            epoch += 1

    def _decode(self, epoch, position, group, decode_sample):
        try:
            image, caption, record = decode_sample(group)
        except DataError:                   # ImageError included: a bad image is skipped
            return None
        torch.manual_seed(sample_key(self.seed, epoch, position))
        caption = pick_text(record.captions or [caption],
                            sample_key(self.seed, epoch, position, "caption"), self.sampling)
        return self.transform(image), caption, position
