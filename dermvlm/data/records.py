"""The common record every source format is converted into, and its JSONL manifest.

A manifest is JSON Lines, one `Record` per line. `image` is a path relative to the manifest's
folder (or absolute). Trainers and evaluators read manifests or webdataset shards
(`dermvlm.data.shards`) and never a source format directly.
"""
import json
from dataclasses import dataclass, field, fields
from pathlib import Path

from dermvlm.errors import DataError


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


@dataclass
class Record:
    image: str                          # path, relative to the manifest folder or absolute
    captions: list = field(default_factory=list)    # free-text descriptions, best first
    label: str | None = None            # leaf diagnosis
    hierarchy: list = field(default_factory=list)   # top category ... leaf
    concepts: list = field(default_factory=list)    # SkinCon concept names present
    fitzpatrick: int | None = None      # 1..6, None when unknown
    fitzpatrick_group: str | None = None  # I-II | III-IV | V-VI (DDI gives only the group)
    body_site: str | None = None
    modality: str | None = None         # clinical | dermoscopic | None
    split: str | None = None            # train | val | test | None
    source: str = ""                    # dataset name, e.g. "derm1m"
    row_id: str = ""                    # where it came from, e.g. "derm1m.csv:17"
    meta: dict = field(default_factory=dict)        # everything else (age, malignant, qa ...)

    def to_json(self):
        # vars(), not asdict(): asdict deep-copies every list and dict (10x slower at 1M rows)
        return _ENCODER.encode(vars(self))

    @classmethod
    def from_dict(cls, data):
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class ManifestWriter:
    """Streams records to a JSONL file (bounded memory for million-row corpora)."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w", encoding="utf-8")
        self.count = 0

    def write(self, record):
        self._file.write(record.to_json())
        self._file.write("\n")
        self.count += 1

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_manifest(path):
    """Yield Records from a JSONL manifest, with image paths resolved against its folder."""
    path = Path(path)
    base = path.parent
    try:
        handle = open(path, encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{path}: cannot open manifest: {exc.strerror}") from None
    with handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = Record.from_dict(json.loads(line))
            except (json.JSONDecodeError, TypeError) as exc:
                raise DataError(f"{path}:{line_no}: not a manifest record: {exc}") from None
            if not Path(record.image).is_absolute():
                record.image = str(base / record.image)
            yield record
