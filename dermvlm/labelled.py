"""Labelled image sets, whatever their layout: a SynthDerm folder, a manifest (or its folder),
or a folder of class subfolders (ROOT/<label>/*.jpg, as data_recipes.image_folder reads)."""
import os
import zlib
from pathlib import Path

from dermvlm.errors import DataError
from dermvlm.imaging import IMAGE_SUFFIXES


def _holds_records(path):
    """A SynthDerm folder, a manifest or a manifest's folder (else: class subfolders)."""
    return (path / "attributes.jsonl").is_file() or (path / "manifest.jsonl").is_file() or \
        path.suffix == ".jsonl"


def labelled_images(spec):
    """[(image path, label or None)] in a stable order."""
    path = Path(spec)
    if _holds_records(path):
        from dermvlm.clip.data import load_records
        return [(r.image, r.label) for r in load_records(path)]
    if path.is_dir():
        items = [(str(p), p.parent.name) for p in sorted(path.rglob("*"))
                 if p.suffix.lower() in IMAGE_SUFFIXES]
        if items:
            return items
    raise DataError(f"{spec}: expected a SynthDerm folder, a manifest, or a folder of "
                    "class subfolders with images")


def labelled_records(spec):
    """Records of a SynthDerm folder, a manifest (or its folder), or a folder of class
    subfolders (each image's label its folder's name)."""
    from dermvlm.clip.data import load_records
    from dermvlm.data.records import Record
    path = Path(spec)
    if _holds_records(path):
        return load_records(path)
    return [Record(image=image, label=label, source=str(spec))
            for image, label in labelled_images(spec)]


def pick_records(records, n):
    """n records in a stable order that does not depend on the folder's layout (by a hash of
    each image's file name)."""
    return sorted(records, key=lambda r: zlib.crc32(Path(r.image).name.encode()))[:n]


def held_out(path, fraction):
    """Whether an image is in the deterministic held-out `fraction` of its set (by a hash of
    its file name, so a set's split does not depend on what else is in it); 0 and 1 give
    none and all."""
    return zlib.crc32(Path(path).name.encode()) % 1000 < round(fraction * 1000)


def concept_labels(spec):
    """{image path: {SkinCon concept: 0 or 1}} from a set's skincon.csv (SynthDerm writes
    one; ImageID relative to the set's folder), or {} when it has none."""
    import csv
    table = Path(spec) / "skincon.csv"
    if not table.is_file():
        return {}
    with open(table, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {os.path.normpath(Path(spec) / row.pop("ImageID")): {
        k: int(float(v or 0)) for k, v in row.items() if k != "Do not consider this image"}
        for row in rows}
