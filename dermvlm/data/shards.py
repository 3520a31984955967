"""Webdataset `.tar` shards: `key.jpg` + `key.txt` (caption) + `key.json` (the record).

The layout open_clip's `--dataset-type webdataset` reads, plus `sizes.json` ({shard: count}).
Writing uses the standard library; reading streams members one at a time, so a corpus of any
size goes through in bounded memory. `dermvlm.clip.data.ShardPairs` streams them to the
trainer, split across DDP ranks.
"""
import io
import json
import tarfile
from pathlib import Path

from dermvlm.data.records import Record
from dermvlm.errors import DataError
from dermvlm.imaging import open_image


class ShardWriter:
    """Writes records (with their image files) into shards of at most `per_shard` samples."""

    def __init__(self, out_dir, per_shard=1000, prefix="shard"):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.per_shard, self.prefix = per_shard, prefix
        self.sizes, self._tar, self._count = {}, None, 0

    def _next_shard(self):
        if self._tar is not None:
            self._tar.close()
        name = f"{self.prefix}-{len(self.sizes):06d}.tar"
        self.sizes[name] = 0
        self._tar = tarfile.open(self.out_dir / name, "w")

    def _add(self, name, payload):
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        self._tar.addfile(info, io.BytesIO(payload))

    def write(self, record, image_bytes, image_ext="jpg"):
        if self._tar is None or self._count % self.per_shard == 0:
            self._next_shard()
        key = f"{self._count:09d}"
        caption = record.captions[0] if record.captions else (record.label or "")
        self._add(f"{key}.{image_ext}", image_bytes)
        self._add(f"{key}.txt", caption.encode("utf-8"))
        self._add(f"{key}.json", record.to_json().encode("utf-8"))
        self.sizes[next(reversed(self.sizes))] += 1
        self._count += 1

    def close(self):
        if self._tar is not None:
            self._tar.close()
        (self.out_dir / "sizes.json").write_text(json.dumps(self.sizes, indent=1))
        return self._count


def shard_paths(spec):
    """A folder (all *.tar, sorted), a single .tar, or a list of tars -> list of Paths."""
    if isinstance(spec, (list, tuple)):
        return [Path(p) for p in spec]
    path = Path(spec)
    if path.is_dir():
        paths = sorted(path.glob("*.tar"))
        if not paths:
            raise DataError(f"{path}: no .tar shards in this folder")
        return paths
    if not path.exists():
        raise DataError(f"{path}: no such shard or folder")
    return [path]


def iter_shard_samples(paths):
    """Yield (key, {ext: bytes}) groups from tar shards, streaming (one sample in memory)."""
    for path in paths:
        try:
            tar = tarfile.open(path, "r|*")
        except (OSError, tarfile.TarError) as exc:
            raise DataError(f"{path}: cannot open shard: {exc}") from None
        with tar:
            key, group = None, {}
            for member in tar:
                if not member.isfile():
                    continue
                stem, _, ext = member.name.rpartition(".")
                if stem != key and group:
                    yield key, group
                    group = {}
                key = stem
                group[ext] = tar.extractfile(member).read()
            if group:
                yield key, group


def decode_sample(group):
    """(PIL RGB image, caption, Record) from one shard sample."""
    ext = next((e for e in ("jpg", "jpeg", "png", "webp") if e in group), None)
    if ext is None:
        raise DataError(f"shard sample without an image (has {sorted(group)})")
    image = open_image(group[ext], name=f"shard sample {group.get('__key__', '')}".strip())
    caption = group.get("txt", b"").decode("utf-8")
    record = Record.from_dict(json.loads(group["json"])) if "json" in group else Record(
        image=ext, captions=[caption])
    return image, caption, record
