"""Reading delimited tables for the recipes: clear errors, and parallel byte ranges.

Rows are identified as `file:line` (the physical line a row starts on; the header is line 1),
which is what an editor shows and what stays exact when a file is cut into byte ranges.

`convert_table` runs a recipe's row function over a table. When no image must be opened
(`--no-validate-images`, no shards) the file is cut at newlines outside quotes into ranges that
worker processes convert independently; their manifests and rejects are concatenated in order.
"""
import csv
import io
import os
import shutil
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from dermvlm.data.convert import Converter, write_report
from dermvlm.errors import DataError

csv.field_size_limit(16 * 1024 * 1024)  # long captions are real; the default 128 KiB is not
CHUNK_BYTES = 16 * 1024 * 1024          # per parallel task: bounds each worker's memory


def read_header(path, sep):
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            return [h.strip() for h in next(csv.reader(handle, delimiter=sep), [])]
    except OSError as exc:
        raise DataError(f"{path}: cannot open: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise DataError(_describe_bad_utf8(path, sep)) from None


def read_table(path, required, sep=",", byte_range=None):
    """Yield (line number, {column: stripped value}) for each data row, with clear errors.

    A short (truncated) row yields None for the columns it lacks. `byte_range=(start, end,
    first_line)` reads only that part of the file (start must follow a newline).
    """
    path = Path(path)
    header = read_header(path, sep)
    _check_header(path, header, required, sep)
    width = len(header)
    if byte_range is None:
        handle = open(path, newline="", encoding="utf-8-sig")
        next(handle, None)   # the header line (a quoted newline in a header is not supported)
        line_offset = 1
    else:
        start, end, line_offset = byte_range
        with open(path, "rb") as raw:
            raw.seek(start)
            data = raw.read(end - start)
        try:
            handle = io.StringIO(data.decode("utf-8"), newline="")
        except UnicodeDecodeError:
            raise DataError(_describe_bad_utf8(path, sep)) from None
        line_offset -= 1
    with handle:
        reader = csv.reader(handle, delimiter=sep, strict=True)
        line = line_offset + 1
        try:
            for fields in reader:
                if fields and len(fields) == width:   # the common case, C-level fast paths
                    yield line, dict(zip(header, map(str.strip, fields)))
                elif fields:
                    row = {h: (fields[i].strip() if i < len(fields) else None)
                           for i, h in enumerate(header)}
                    if len(fields) > width:
                        row[None] = fields[width:]
                    yield line, row
                line = line_offset + reader.line_num + 1
        except UnicodeDecodeError:
            raise DataError(_describe_bad_utf8(path, sep)) from None
        except csv.Error as exc:
            raise DataError(f"{path}: line {line}: malformed or truncated CSV: {exc}") from None


def _describe_bad_utf8(path, sep):
    """Where the first non-UTF-8 byte is: line and column (decoding is chunked, so the
    reader's own position is not exact)."""
    data = Path(path).read_bytes()
    try:
        data.decode("utf-8-sig")
        return f"{path}: bytes are not UTF-8; re-save the file as UTF-8"
    except UnicodeDecodeError as exc:
        start = exc.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
    line_start = data.rfind(b"\n", 0, start) + 1
    line_no = data.count(b"\n", 0, start) + 1
    header = data.split(b"\n", 1)[0].decode("utf-8", "replace").strip().split(sep)
    column_index = data[line_start:start].count(sep.encode())
    column = header[column_index].strip() if column_index < len(header) else "?"
    return (f"{path}: line {line_no}, column {column!r}: byte 0x{data[start]:02x} is not UTF-8 "
            "(the file looks Latin-1 or cp1252 encoded); re-save the file as UTF-8")


def _check_header(path, header, required, sep):
    if not header:
        raise DataError(f"{path}: empty file, expected a header row")
    missing = [c for c in required if c not in header]
    if not missing:
        return
    joined = sep.join(header)
    for other, name in (("\t", "tab"), (",", "comma"), (";", "semicolon"), ("|", "pipe")):
        if other != sep and len(header) == 1 and other in joined:
            raise DataError(f"{path}: header has a single column but contains {name}s: the "
                            f"file looks {name}-separated; pass --sep {other!r}")
    raise DataError(f"{path}: missing required column(s) {', '.join(missing)} "
                    f"(found: {', '.join(header)})")


def byte_ranges(path, chunk_bytes=None):
    """[(start, end, first line)] covering the data rows, cut only at newlines that lie outside
    quoted fields. One sequential pass; quotes and newlines are counted in C, block by block."""
    chunk_bytes = chunk_bytes or CHUNK_BYTES
    ranges = []
    with open(path, "rb") as f:
        header = f.readline()
        if not header.endswith(b"\n"):
            return []
        start, line, quote_parity = len(header), 2, header.count(b'"') % 2
        block_start, pending = start, b""       # pending: bytes of the range not yet cut
        while True:
            block = f.read(chunk_bytes)
            pending += block
            if len(pending) >= chunk_bytes or (not block and pending):
                cut = _find_cut(pending, quote_parity, final=not block)
                if cut:
                    piece = pending[:cut]
                    ranges.append((block_start, block_start + cut, line))
                    line += piece.count(b"\n")
                    quote_parity = (quote_parity + piece.count(b'"')) % 2
                    block_start += cut
                    pending = pending[cut:]
            if not block:
                return ranges


def _find_cut(data, quote_parity, final):
    """The end of the last complete row in data (after a newline outside quotes), or all of it
    at the end of the file; 0 if no row ends inside data."""
    if final:
        return len(data)
    cut = data.rfind(b"\n") + 1
    while cut > 0 and (quote_parity + data.count(b'"', 0, cut)) % 2:
        cut = data.rfind(b"\n", 0, cut - 1) + 1
    return cut


def _convert_range(job):
    """Worker: convert one byte range into its own part folder; returns its counts."""
    name, table, required, sep, make_record, context, part_dir, byte_range, options = job
    converter = Converter(name, part_dir, **options)
    for line, row in read_table(table, required, sep, byte_range):
        process_row(converter, make_record, f"{Path(table).name}:{line}", row, context)
    return converter.close()


def process_row(converter, make_record, row_id, row, context):
    converter.read += 1
    if None in row.values():
        short = [k for k, v in row.items() if v is None]
        converter.reject(row_id, f"truncated row: no value for column(s) {', '.join(short)}",
                         row)
        return
    record = make_record(row, row_id, context)
    if isinstance(record, str):
        converter.reject(row_id, record, row)
    else:
        converter.accept(record, row)


def convert_table(name, args, required, make_record, context, one_row_per_image=True,
                  parallel=True):
    """Run `make_record(row, row_id, context) -> Record | reject reason` over args.table.

    `parallel=False` for recipes whose row function keeps state across rows.
    """
    options = dict(validate_images=args.validate_images, shards=args.shards,
                   per_shard=args.per_shard, one_row_per_image=one_row_per_image)
    workers = getattr(args, "workers", None) or os.cpu_count() or 1
    parallel = parallel and not args.validate_images and not args.shards and workers > 1
    ranges = byte_ranges(args.table) if parallel else []
    if len(ranges) < 2:
        converter = Converter(name, args.out, **options)
        for line, row in read_table(args.table, required, args.sep):
            process_row(converter, make_record, f"{Path(args.table).name}:{line}", row,
                        context)
        return converter.finish(quiet=args.quiet)
    out = Path(args.out)
    parts = [out / ".parts" / f"{i:05d}" for i in range(len(ranges))]
    options["relative_to"] = out   # image paths relative to the final manifest, not the part
    jobs = [(name, args.table, required, args.sep, make_record, context, part, byte_range,
             options) for part, byte_range in zip(parts, ranges)]
    with ProcessPoolExecutor(min(workers, len(ranges))) as pool:
        all_counts = list(pool.map(_convert_range, jobs))
    _concatenate([p / "manifest.jsonl" for p in parts], out / "manifest.jsonl")
    _concatenate([p / "rejects.csv" for p in parts], out / "rejects.csv", skip_header=True)
    shutil.rmtree(out / ".parts")
    counts = {"rows_read": 0, "written": 0, "rejected": 0, "reject_reasons": Counter(),
              "near_duplicates": 0, "leakage": []}
    for part in all_counts:
        for key in ("rows_read", "written", "rejected", "near_duplicates"):
            counts[key] += part[key]
        counts["reject_reasons"].update(part["reject_reasons"])
    counts["reject_reasons"] = dict(counts["reject_reasons"])
    return write_report(name, out, counts, {"workers": workers, "byte_ranges": len(ranges)},
                        quiet=args.quiet)


def _concatenate(sources, target, skip_header=False):
    with open(target, "wb") as out:
        for i, source in enumerate(sources):
            with open(source, "rb") as f:
                if skip_header and i:
                    f.readline()
                shutil.copyfileobj(f, out)
