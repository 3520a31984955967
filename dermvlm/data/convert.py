"""What every data recipe shares: checked CSV reading, image checks, duplicate and leakage
detection, and an accounting where rows in = written + rejected, each reject with its reason.

    converter = Converter("derm1m", out_dir, validate_images=True, shards=False)
    for row_id, row in rows:
        ...  converter.accept(record, row) or converter.reject(row_id, reason, row)
    report = converter.finish()     # manifest.jsonl, rejects.csv, report.json (+ shards/)

Table recipes go through `dermvlm.data.tables.convert_table`, which reads the CSV (in parallel
byte ranges when no image has to be opened) and drives a Converter per range.
"""
import csv
import hashlib
import io
import json
import os
import sys
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from dermvlm.data.records import ManifestWriter
from dermvlm.data.shards import ShardWriter
from dermvlm.errors import DataError


def _fingerprint(image):
    """(64-bit difference hash, 16x16 RGB thumbnail) of an image, for near-duplicates.

    The hash finds candidates cheaply (banded lookup); the thumbnail confirms them, because
    low-texture skin photographs share hashes without being copies of each other.
    """
    rgb = image.convert("RGB")
    small = np.asarray(rgb.convert("L").resize((9, 8), Image.BILINEAR), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    hash64 = int(np.packbits(bits).view(">u8")[0])
    thumb = np.asarray(rgb.resize((16, 16), Image.BOX), dtype=np.uint8)
    return hash64, thumb


class Converter:
    """Accepts or rejects records, detects duplicates/leakage, writes the outputs."""

    NEAR_DUPLICATE_BITS = 12    # dHash Hamming distance for a near-duplicate candidate
    NEAR_DUPLICATE_LEVELS = 2.0  # ... confirmed when 16x16 thumbnails differ < 2/255 on average

    def __init__(self, name, out_dir, validate_images=True, shards=False, per_shard=1000,
                 one_row_per_image=True, relative_to=None, protect_split=None):
        self.name, self.out_dir = name, Path(out_dir)
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"cannot create output folder {self.out_dir}: {exc.strerror}")
        self.validate_images = validate_images
        # a row that duplicates (or nearly) an image of this split is rejected, not written:
        # converting the test split first keeps its copies out of training
        self.protect_split = protect_split
        self._out_abs = os.path.abspath(relative_to or self.out_dir)
        self._relative_dirs = {}
        # VQA tables have many rows per image: check each image once, and do not call the
        # repeats duplicates (different images with the same bytes still are).
        self.one_row_per_image = one_row_per_image
        self._checked_paths = {}             # path -> sha256, when not one_row_per_image
        self.manifest = ManifestWriter(self.out_dir / "manifest.jsonl")
        self.shards = ShardWriter(self.out_dir / "shards", per_shard) if shards else None
        self._rejects = open(self.out_dir / "rejects.csv", "w", newline="", encoding="utf-8")
        self._reject_writer = csv.writer(self._rejects)
        self._reject_writer.writerow(["row_id", "reason", "row"])
        self.read = self.written = self.rejected = 0
        self.reasons = Counter()
        self._by_digest = {}                 # sha256 -> (row_id, split)
        self._bands = defaultdict(list)      # (band, 16 bits) -> [(hash, row_id, split)]
        self.near_duplicates, self.leakage = [], []

    def reject(self, row_id, reason, row=None):
        self.rejected += 1
        self.reasons[reason.split(":")[0]] += 1
        self._reject_writer.writerow([row_id, reason, json.dumps(row, ensure_ascii=False,
                                                                 default=str)])

    def accept(self, record, row=None):
        """Check a record's image (if validating) and write it; returns True if written."""
        image_bytes = None
        if self.validate_images or self.shards:
            image_path = Path(record.image)
            if not image_path.is_file():
                self.reject(record.row_id, f"missing image: {image_path}", row)
                return False
            image_bytes = image_path.read_bytes()
            if self.validate_images and not self._check_image(record, image_bytes, row):
                return False
        image_abs = record.image
        record.image = self._relative(image_abs)
        self.manifest.write(record)
        if self.shards:
            self.shards.write(record, image_bytes,
                              os.path.splitext(image_abs)[1].lstrip(".").lower() or "jpg")
        self.written += 1
        return True

    def _relative(self, path):
        """`path` relative to the output folder; string arithmetic cached per folder (no
        filesystem calls per row; a million rows share a few thousand folders)."""
        folder, name = os.path.split(path)
        rel = self._relative_dirs.get(folder)
        if rel is None:
            rel = self._relative_dirs[folder] = os.path.relpath(os.path.abspath(folder),
                                                                self._out_abs)
        return os.path.join(rel, name) if rel != "." else name

    def _check_image(self, record, image_bytes, row):
        if not self.one_row_per_image and record.image in self._checked_paths:
            return True
        try:
            with Image.open(io.BytesIO(image_bytes)) as image:
                image.draft("RGB", (64, 64))   # JPEG: decode at reduced size, much faster
                image.load()
                hash64, thumb = _fingerprint(image)
        except Exception as exc:  # PIL raises many types for corrupt files
            self.reject(record.row_id, f"unreadable image: {record.image}: "
                        f"{type(exc).__name__}", row)
            return False
        digest = hashlib.sha256(image_bytes).hexdigest()
        if digest in self._by_digest:
            first_id, first_split = self._by_digest[digest]
            if first_split != record.split:
                self.leakage.append({"kind": "exact", "rows": [first_id, record.row_id],
                                     "splits": [first_split, record.split]})
            self.reject(record.row_id, f"duplicate: same image bytes as {first_id}", row)
            return False
        leaked = self._note_near_duplicates(hash64, thumb, record)
        if leaked:
            self.reject(record.row_id, f"leakage: near-duplicate of {self.protect_split} "
                        f"image {leaked}", row)
            return False
        self._by_digest[digest] = (record.row_id, record.split)
        if not self.one_row_per_image:
            self._checked_paths[record.image] = digest
        return True

    def _note_near_duplicates(self, hash64, thumb, record):
        """Compare with earlier images sharing a 8-bit band of the hash (pigeonhole: any pair
        within 7 bits shares one), then confirm on thumbnails. Returns the row id of a
        protected-split image this one nearly duplicates (it is then not remembered), else
        None."""
        seen, pairs = set(), []
        for band in range(8):
            key = (band, (hash64 >> (8 * band)) & 0xFF)
            for other_hash, other_thumb, other_id, other_split in self._bands[key]:
                if other_id in seen:
                    continue
                seen.add(other_id)
                if (bin(hash64 ^ other_hash).count("1") <= self.NEAR_DUPLICATE_BITS and
                        np.abs(thumb.astype(np.int16) - other_thumb).mean()
                        < self.NEAR_DUPLICATE_LEVELS):
                    pairs.append({"kind": "near", "rows": [other_id, record.row_id],
                                  "splits": [other_split, record.split]})
        self.near_duplicates += pairs
        self.leakage += [p for p in pairs if p["splits"][0] != record.split]
        for pair in pairs:
            if self.protect_split and record.split != self.protect_split and \
                    pair["splits"][0] == self.protect_split:
                return pair["rows"][0]
        for band in range(8):
            self._bands[(band, (hash64 >> (8 * band)) & 0xFF)].append(
                (hash64, thumb, record.row_id, record.split))
        return None

    def close(self):
        """Close the files; returns this converter's counts (mergeable across byte ranges)."""
        self.manifest.close()
        self._rejects.close()
        if self.shards:
            self.shards.close()
        return {"rows_read": self.read, "written": self.written, "rejected": self.rejected,
                "reject_reasons": dict(self.reasons),
                "near_duplicates": len(self.near_duplicates), "leakage": self.leakage}

    def finish(self, extra=None, quiet=False):
        """Close files, write report.json, print a one-line summary; returns the report."""
        counts = self.close()
        if self.shards:
            extra = {"shards": str(self.out_dir / "shards"), **(extra or {})}
        return write_report(self.name, self.out_dir, counts, extra, quiet)


def write_report(name, out_dir, counts, extra=None, quiet=False):
    """report.json and the summary line from (merged) counts; checks the accounting."""
    leakage = counts["leakage"]
    report = {"recipe": name, **counts, "leakage": leakage[:1000],
              "leakage_pairs": len(leakage), "manifest": str(Path(out_dir) / "manifest.jsonl"),
              "shards": None, **(extra or {})}
    (Path(out_dir) / "report.json").write_text(json.dumps(report, indent=1))
    if not quiet:
        reasons = ", ".join(f"{k}: {v}" for k, v in Counter(counts["reject_reasons"])
                            .most_common()) or "none"
        print(f"[{name}] rows read {counts['rows_read']}, written {counts['written']}, "
              f"rejected {counts['rejected']} ({reasons}); near-duplicates "
              f"{counts['near_duplicates']}, cross-split leakage pairs {len(leakage)} -> "
              f"{out_dir}", file=sys.stderr)
    if counts["rows_read"] != counts["written"] + counts["rejected"]:
        raise AssertionError(f"accounting error: {counts['rows_read']} read != "
                             f"{counts['written']} written + {counts['rejected']} rejected")
    return report
