"""Records for real labelled images: captions and conversations from what the labels say
(dermvlm.labeltext, dermvlm.chat), shared by the recipes of real sets (isic9, HAM10000,
PAD-UFES-20, ISIC 2019)."""
import os
import zlib
from pathlib import Path

import numpy as np

from dermvlm.data.records import Record
from dermvlm.errors import DataError
from dermvlm.imaging import IMAGE_SUFFIXES
from dermvlm.labeltext import ISIC9_CLASSES, LabelTruth


class ImageIndex:
    """Image files under a folder by name stem (class subfolders searched), so a table's
    image id finds its file wherever the set keeps it."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.by_stem = {p.stem: str(p) for p in sorted(self.folder.rglob("*"))
                        if p.suffix.lower() in IMAGE_SUFFIXES} if self.folder.is_dir() else {}

    def path(self, name, suffix=".jpg"):
        """The file for an image id or file name; where it would be when absent (the
        converter then rejects the row as a missing image)."""
        stem = Path(name).stem
        return self.by_stem.get(stem) or os.path.join(self.folder, name if Path(name).suffix
                                                      else stem + suffix)


def real_conversations(truth, rng, classes=ISIC9_CLASSES):
    """The closed questions and a reasoning chat for one labelled real image."""
    from dermvlm.chat import label_chat
    return truth.closed_questions(rng, classes) + [label_chat(truth, rng, classes)]


def truth_record(label, image, modality, split, source, row_id, age=None, sex=None,
                 site=None, meta=None, fitzpatrick=None, classes=ISIC9_CLASSES):
    """A Record with captions and conversations from the label, or a reject reason."""
    from dermvlm.vocab import fitzpatrick_group
    try:
        truth = LabelTruth.from_label(label, modality=modality, age=age, sex=sex, site=site)
    except DataError as exc:
        return f"unknown label: {exc}"
    rng = np.random.default_rng(zlib.crc32(row_id.encode()))
    return Record(image=str(image), captions=truth.captions(), label=truth.label,
                  hierarchy=list(truth.condition.hierarchy), modality=modality,
                  body_site=site, fitzpatrick=fitzpatrick,
                  fitzpatrick_group=fitzpatrick_group(fitzpatrick), split=split,
                  source=source, row_id=row_id,
                  meta={**(meta or {}), "diagnosis": truth.name,
                        "malignancy": truth.malignancy, "age": age, "sex": sex,
                        "conversations": real_conversations(truth, rng, classes)})
