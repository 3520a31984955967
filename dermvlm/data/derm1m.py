"""Reading Derm1M rows: placeholder cleaning, the ontology's paths, one row -> Record.
The recipe (`python -m data_recipes.derm1m`) and the trainers' SynthDerm reader share it."""
import json
import os
import re
from pathlib import Path

from dermvlm.data.records import Record
from dermvlm.errors import DataError

COLUMNS = ("filename", "caption", "truncated_caption", "disease_label",
           "hierarchical_disease_label", "skin_concept", "source", "source_type",
           "body_location", "symptoms", "age", "gender")
REQUIRED = ("filename", "caption")
_PLACEHOLDER = re.compile(r"^No .*(information|concepts|diagnosis)$|^(nan|none|n/a|)$",
                          re.IGNORECASE)


def clean(value):
    """None for missing values and Derm1M's placeholder strings, else the stripped string."""
    if not value:
        return None
    value = value.strip()
    if not value or (value[0] in "Nn" and _PLACEHOLDER.match(value)):  # cheap pre-check
        return None
    return value


def split_list(value):
    value = clean(value)
    return [v.strip() for v in value.split(",") if v.strip()] if value else []


def ontology_paths(path):
    """{leaf or node: [top, ..., node]} from a Derm1M ontology.json ({node: [children]})."""
    try:
        tree = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: cannot read ontology: {exc}") from None
    parent = {child: node for node, children in tree.items() for child in children}
    paths = {}
    for node in tree:
        chain, cur = [], node
        while cur is not None and cur != "root" and len(chain) < 50:
            chain.append(cur)
            cur = parent.get(cur)
        paths[node] = chain[::-1]
    return paths


def record_from_row(row, row_id, context):
    """A Record, or a reject reason (str)."""
    images, paths, split = context
    filename, caption = clean(row.get("filename")), clean(row.get("caption"))
    if not filename:
        return "missing image: empty filename"
    if not caption:
        return "empty caption"
    label = clean(row.get("disease_label"))
    hierarchy = split_list(row.get("hierarchical_disease_label"))
    if paths is not None and label is not None:
        if label not in paths:
            return f"unknown label: {label!r} is not in the ontology"
        hierarchy = paths[label]
    captions = [caption]
    truncated = clean(row.get("truncated_caption"))
    if truncated and truncated != caption:
        captions.append(truncated)
    age = clean(row.get("age"))
    return Record(
        image=os.path.join(images, filename), captions=captions, label=label, hierarchy=hierarchy,
        concepts=split_list(row.get("skin_concept")), body_site=clean(row.get("body_location")),
        split=split, source=clean(row.get("source")) or "derm1m", row_id=row_id,
        meta={"age": int(age) if age and age.isdigit() else age,
              "gender": clean(row.get("gender")), "symptoms": split_list(row.get("symptoms")),
              "source_type": clean(row.get("source_type"))})
