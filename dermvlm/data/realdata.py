"""The real image sets of the project's shared folder (../shared/realdata) as Records.

Each set there has a `labels.csv` with a per-image `split` (lesion- or patient-grouped,
fixed upstream). They are read in place, never copied:

    records, rejects = read_set("ham10000", REALDATA / "ham10000")
    train = [r for r in records if r.split == "train"]
    train, dropped = drop_leaks(train, held_out_ids())   # no evaluation image trains

Captions and conversations come from what each row says (dermvlm.data.real.truth_record):
the diagnosis, its ontology path and malignancy, the modality, and age, sex and site where
the table gives them. isic9 has no labels.csv; its recipe (data_recipes.isic9) splits it.
"""
import csv
from pathlib import Path

from dermvlm.data.real import truth_record
from dermvlm.errors import DataError

REALDATA = Path(__file__).resolve().parents[3] / "shared/realdata"

HAM_DX = {"akiec": "actinic keratosis", "bcc": "basal cell carcinoma",
          "bkl": "pigmented benign keratosis", "df": "dermatofibroma", "mel": "melanoma",
          "nv": "melanocytic nevus", "vasc": "vascular lesion"}
ISIC2017_LABELS = {"melanoma": "melanoma", "nevus": "melanocytic nevus",
                   "seborrheic_keratosis": "seborrhoeic keratosis"}
PAD_DIAGNOSTIC = {"ACK": "actinic keratosis", "BCC": "basal cell carcinoma",
                  "MEL": "melanoma", "NEV": "melanocytic nevus",
                  "SCC": "squamous cell carcinoma", "SEK": "seborrhoeic keratosis"}
# each set's own label space, as the peers score it (DESIGN.md 5b)
CLASSES = {"ham10000": tuple(HAM_DX.values()), "isic2017": tuple(ISIC2017_LABELS.values()),
           "pad-ufes-20": tuple(PAD_DIAGNOSTIC.values())}
SPLITS = ("train", "val", "test")


def ham_fields(row):
    """{label, age, sex, site} of a HAM10000 metadata row (its upstream columns), or the
    reason it is rejected; shared with data_recipes.ham10000."""
    if row.get("dx") not in HAM_DX:
        return f"unknown label: dx {row.get('dx')!r} (expected one of {', '.join(HAM_DX)})"
    try:
        age = int(float(row["age"])) if row.get("age") else None
    except ValueError:
        return f"bad value: age {row['age']!r} (expected a number)"
    site = row.get("localization")
    return dict(label=HAM_DX[row["dx"]], age=age,
                sex=row.get("sex") if row.get("sex") in ("male", "female") else None,
                site=site if site and site != "unknown" else None)


def _ham(row):
    fields = ham_fields(row)
    if isinstance(fields, str):
        return fields
    return dict(fields, modality="dermoscopic",
                meta={"lesion_id": row.get("lesion_id"), "image_id": row.get("image_id"),
                      "dx_type": row.get("dx_type") or None,
                      "in_isic9_train": row.get("in_isic9_train") == "true"})


def _isic2017(row):
    if row.get("label") not in ISIC2017_LABELS:
        return (f"unknown label: {row.get('label')!r} (expected one of "
                f"{', '.join(ISIC2017_LABELS)})")
    return dict(label=ISIC2017_LABELS[row["label"]], modality="dermoscopic",
                meta={"image_id": row.get("image_id"), "also_in": row.get("also_in") or None})


def _pad(row):
    if row.get("diagnostic") not in PAD_DIAGNOSTIC:
        return (f"unknown label: diagnostic {row.get('diagnostic')!r} (expected one of "
                f"{', '.join(PAD_DIAGNOSTIC)})")
    try:
        fitzpatrick = int(float(row["fitzpatrick"])) if row.get("fitzpatrick") else None
    except ValueError:
        return f"bad value: fitzpatrick {row['fitzpatrick']!r} (expected 1-6)"
    region = (row.get("region") or "").lower() or None
    return dict(label=PAD_DIAGNOSTIC[row["diagnostic"]], modality="clinical", site=region,
                fitzpatrick=fitzpatrick,
                meta={"lesion_id": f"PAD_{row.get('lesion_id')}",
                      "patient_id": row.get("patient_id"),
                      "biopsied": row.get("biopsed") == "True"})


READERS = {"ham10000": _ham, "isic2017": _isic2017, "pad-ufes-20": _pad}


def read_set(name, folder):
    """(records, rejects) of one shared set; rejects are (row id, reason). A missing
    folder or labels.csv is one DataError naming it."""
    if name not in READERS:
        raise DataError(f"unknown shared set {name!r}; choose one of {', '.join(READERS)}")
    table = Path(folder) / "labels.csv"
    if not table.is_file():
        raise DataError(f"{table}: not found (expected the {name} folder of shared/realdata)")
    records, rejects = [], []
    with open(table, newline="", encoding="utf-8") as handle:
        for line, row in enumerate(csv.DictReader(handle), start=2):
            row_id = f"{table.name}:{line}"
            fields = READERS[name](row)
            image = Path(folder) / (row.get("file") or "")
            if isinstance(fields, dict) and not image.is_file():
                fields = f"missing image: {row.get('file')!r} not under {folder}"
            if isinstance(fields, dict) and row.get("split") not in SPLITS:
                fields = f"bad value: split {row.get('split')!r} (expected train, val or test)"
            if isinstance(fields, str):
                rejects.append((row_id, fields))
                continue
            label = fields.pop("label")
            record = truth_record(label, image, fields.pop("modality"), row["split"], name,
                                  row_id, **fields)
            if isinstance(record, str):
                rejects.append((row_id, record))
            else:
                records.append(record)
    return records, rejects


def isic_id(record):
    """The ISIC image id of a record (from its meta or its file name), or None."""
    stem = (record.meta or {}).get("image_id") or Path(record.image).stem
    return stem if stem.startswith("ISIC_") else None


def held_out_ids(realdata=REALDATA, splits=("val", "test")):
    """ISIC ids that no training set may hold: every image of isic9 Test and of the `splits`
    of ham10000 and isic2017, widened to every image of the same HAM10000 lesion
    (HAM10000_metadata.csv's lesion_id). isic9 Train, for one, holds siblings of ham10000
    test lesions; training on them would inflate the test figures. With splits=("test",):
    what no val split may hold either (val chooses checkpoints and fits the trust file)."""
    realdata = Path(realdata)
    ids = {p.stem for p in (realdata / "isic9/Test").rglob("*.jpg")}
    for name in ("ham10000", "isic2017"):
        with open(realdata / name / "labels.csv", newline="", encoding="utf-8") as handle:
            ids |= {row["image_id"] for row in csv.DictReader(handle)
                    if row.get("split") in splits}
    table = realdata / "tables/ham10000/HAM10000_metadata.csv"
    if table.is_file():
        with open(table, newline="", encoding="utf-8") as handle:
            lesion_of = {row["image_id"]: row["lesion_id"] for row in csv.DictReader(handle)}
        lesions = {lesion_of[i] for i in ids if i in lesion_of}
        ids |= {i for i, lesion in lesion_of.items() if lesion in lesions}
    return ids


def drop_leaks(records, held_out):
    """(kept, dropped): records whose ISIC id is in `held_out` are dropped."""
    kept = [r for r in records if isic_id(r) not in held_out]
    return kept, [r for r in records if isic_id(r) in held_out]
