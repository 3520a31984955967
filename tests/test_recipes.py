"""Each recipe converts its fixture (real column names, realistic quirks): rows in = written +
rejected, every reject with its reason; bad files give errors naming file, row and column."""
import csv
import json
import shutil
from pathlib import Path

import pytest

from data_recipes import (dermabench, ddi, derm1m, fitzpatrick17k, image_folder, llava, mm_skin,
                          skincap, skincon)
from dermvlm.config import SynthConfig
from dermvlm.data.records import read_manifest
from dermvlm.data.shards import decode_sample, iter_shard_samples, shard_paths
from dermvlm.questions import load_questions
from dermvlm.synth.render import render
from dermvlm.synth.sample import sample_attributes

FIXTURES = Path(__file__).parent / "fixtures" / "recipes"


def _write_images(folder, names):
    """Distinct small images (SynthDerm renders) under the given names."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        render(sample_attributes(SynthConfig(seed=99), i), 48).save(folder / name)


@pytest.fixture
def work(tmp_path):
    for f in FIXTURES.iterdir():
        shutil.copy(f, tmp_path / f.name)
    return tmp_path


def _rejects(out):
    with open(out / "rejects.csv", newline="") as f:
        return {row["row_id"]: row["reason"] for row in csv.DictReader(f)}


def _check_accounting(out, read, written):
    report = json.loads((out / "report.json").read_text())
    assert (report["rows_read"], report["written"]) == (read, written)
    assert report["rows_read"] == report["written"] + report["rejected"]
    assert len(_rejects(out)) == report["rejected"]
    assert len(list(read_manifest(out / "manifest.jsonl"))) == written
    return report


def test_derm1m_recipe(work):
    img = work / "img"
    _write_images(img, ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg", "f.jpg"])
    shutil.copy(img / "a.jpg", img / "a_copy.jpg")
    (img / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    out = work / "out"
    assert derm1m.main(["--csv", str(work / "derm1m.csv"), "--out", str(out), "--quiet"]) == 0
    _check_accounting(out, read=9, written=3)
    reasons = _rejects(out)
    assert reasons["derm1m.csv:4"].startswith("missing image")
    assert reasons["derm1m.csv:5"] == "empty caption"
    assert reasons["derm1m.csv:6"].startswith("unknown label")
    assert reasons["derm1m.csv:7"].startswith("duplicate: same image bytes as derm1m.csv:2")
    assert reasons["derm1m.csv:9"].startswith("unreadable image")
    assert reasons["derm1m.csv:10"].startswith("truncated row")
    records = {r.row_id: r for r in read_manifest(out / "manifest.jsonl")}
    first, second, third = records["derm1m.csv:2"], records["derm1m.csv:3"], \
        records["derm1m.csv:8"]
    assert first.captions[0] == "Red, scaly plaques on the elbows, consistent with psoriasis."
    assert first.hierarchy == ["Inflammatory", "Papulosquamous", "psoriasis"]
    assert first.concepts == ["Plaque", "Scale", "Erythema"]
    assert first.meta["age"] == 45 and first.meta["symptoms"] == ["itch", "pain"]
    assert second.label == "melanocytic nevus" and second.concepts == []
    assert second.body_site is None and second.meta["age"] is None
    assert second.captions[0] == "A brown macule with a regular border."
    assert third.label is None and third.hierarchy == []
    assert Path(first.image).is_file()


def test_fitzpatrick17k_recipe(work):
    _write_images(work, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    out = work / "out"
    fitzpatrick17k.main(["--csv", str(work / "fitzpatrick17k.csv"), "--out", str(out),
                         "--quiet"])
    _check_accounting(out, read=5, written=2)
    records = {r.row_id: r for r in read_manifest(out / "manifest.jsonl")}
    assert records["fitzpatrick17k.csv:2"].fitzpatrick == 3
    assert records["fitzpatrick17k.csv:2"].fitzpatrick_group == "III-IV"
    assert records["fitzpatrick17k.csv:3"].fitzpatrick is None  # -1 = unknown, kept
    reasons = _rejects(out)
    assert reasons["fitzpatrick17k.csv:4"].startswith("excluded: qc")
    assert "fitzpatrick_scale '9'" in reasons["fitzpatrick17k.csv:5"]
    assert reasons["fitzpatrick17k.csv:6"].startswith("missing image")


def test_ddi_recipe(work):
    _write_images(work, [f"00000{i}.png" for i in range(1, 6)])
    out = work / "out"
    ddi.main(["--csv", str(work / "ddi_metadata.csv"), "--out", str(out), "--quiet"])
    _check_accounting(out, read=5, written=3)
    groups = [r.fitzpatrick_group for r in read_manifest(out / "manifest.jsonl")]
    assert groups == ["I-II", "III-IV", "V-VI"]
    reasons = _rejects(out)
    assert "skin_tone '78'" in reasons["ddi_metadata.csv:5"]
    assert "malignant 'maybe'" in reasons["ddi_metadata.csv:6"]


@pytest.mark.parametrize("module, table", [(skincap, "skincap.csv"), (skincon, "skincon.csv")])
def test_skincap_and_skincon_recipes(work, module, table):
    _write_images(work, ["a.jpg", "b.jpg", "c.jpg"])
    out = work / "out"
    module.main(["--csv", str(work / table), "--out", str(out), "--quiet"])
    written = 1 if module is skincap else 2   # skincon has no captions to be empty
    _check_accounting(out, read=4, written=written)
    first = next(read_manifest(out / "manifest.jsonl"))
    assert first.concepts == ["Plaque", "Scale"]
    assert _rejects(out)[f"{table}:3"].startswith("excluded")


def test_mm_skin_recipe_keeps_several_questions_per_image(work):
    _write_images(work, ["a.jpg", "b.jpg"])
    out = work / "out"
    mm_skin.main(["--csv", str(work / "mm_skin.csv"), "--out", str(out), "--quiet"])
    _check_accounting(out, read=4, written=2)
    first = next(read_manifest(out / "manifest.jsonl"))
    assert first.meta["conversations"][1]["value"] == "Red, annular."


def test_llava_recipe_validates_conversations(work):
    _write_images(work, ["a.jpg", "b.jpg"])
    out = work / "out"
    llava.main(["--json", str(work / "llava.json"), "--out", str(out), "--quiet"])
    _check_accounting(out, read=5, written=2)
    reasons = _rejects(out)
    assert "found 0" in reasons["llava.json:1"] and "found 2" in reasons["llava.json:2"]
    assert "turn 0 should be from 'human'" in reasons["llava.json:3"]


def test_dermabench_recipe_writes_questions_and_answers(work):
    _write_images(work, ["a.jpg", "b.jpg"])
    out = work / "out"
    dermabench.main(["--csv", str(work / "dermabench.csv"), "--out", str(out), "--quiet"])
    _check_accounting(out, read=6, written=4)
    questions = {q.id: q for q in load_questions(out / "dermabench_questions.json")}
    assert set(questions) == {"Q1", "Q2", "Q3"} and questions["Q1"].type == "multi"
    answers = [json.loads(x) for x in (out / "dermabench_answers.jsonl").read_text()
               .splitlines()]
    assert answers[0]["answer"] == ["red", "white"] and answers[0]["fitzpatrick"] == 3
    assert answers[2]["fitzpatrick_group"] == "V-VI"
    reasons = _rejects(out)
    assert reasons["dermabench.csv:5"].startswith("answer not in options")
    assert reasons["dermabench.csv:7"].startswith("unknown question type: 'scale'")


def test_image_folder_recipe(tmp_path):
    root = tmp_path / "root"
    _write_images(root / "psoriasis", ["x.jpg"])
    _write_images(root / "nevus", ["y.png"])
    (root / "notes.txt").write_text("hi")
    _write_images(root, ["loose.jpg"])
    out = tmp_path / "out"
    image_folder.main(["--root", str(root), "--out", str(out), "--quiet"])
    _check_accounting(out, read=4, written=2)
    assert {r.label for r in read_manifest(out / "manifest.jsonl")} == {"psoriasis", "nevus"}


def test_near_duplicates_across_splits_are_reported(tmp_path):
    from PIL import Image
    _write_images(tmp_path, ["a.jpg", "b.jpg"])
    Image.open(tmp_path / "a.jpg").resize((40, 40)).save(tmp_path / "a_small.jpg", quality=70)
    table = tmp_path / "pairs.csv"
    table.write_text("filename,caption\na.jpg,one\nb.jpg,two\na_small.jpg,three\n")
    from dermvlm.data.convert import Converter
    converter = Converter("t", tmp_path / "out")
    from dermvlm.data.records import Record
    for i, (name, split) in enumerate([("a.jpg", "train"), ("b.jpg", "train"),
                                       ("a_small.jpg", "test")]):
        converter.read += 1
        converter.accept(Record(image=str(tmp_path / name), split=split, row_id=f"r{i}"))
    report = converter.finish(quiet=True)
    assert report["near_duplicates"] == 1 and report["leakage_pairs"] == 1
    assert report["leakage"][0]["rows"] == ["r0", "r2"]


def test_synthderm_round_trips_into_shards(synth_dir, tmp_path):
    out = tmp_path / "derm1m"
    assert derm1m.main(["--csv", str(synth_dir / "derm1m.csv"), "--out", str(out), "--shards",
                        "--per-shard", "16", "--quiet"]) == 0
    report = _check_accounting(out, read=40, written=40)
    assert report["rejected"] == 0
    sizes = json.loads((out / "shards" / "sizes.json").read_text())
    assert sum(sizes.values()) == 40 and len(sizes) == 3
    with open(synth_dir / "derm1m.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    shards = shard_paths(out / "shards")
    samples = [decode_sample(group) for _, group in iter_shard_samples(shards)]
    assert [s[1] for s in samples] == [r["caption"] for r in rows]
    assert [s[2].label for s in samples] == [r["disease_label"] for r in rows]
    assert samples[0][0].size == (96, 96)


# ---- bad input: one clear error naming file, row and column
def _error(capsys, argv):
    code = derm1m.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    return err


def test_wrong_separator(tmp_path, capsys):
    table = tmp_path / "tabs.csv"
    table.write_text("filename\tcaption\na.jpg\thello\n")
    err = _error(capsys, ["--csv", str(table), "--out", str(tmp_path / "o")])
    assert "tabs.csv" in err and "tab-separated" in err and "--sep" in err


def test_missing_required_column(tmp_path, capsys):
    table = tmp_path / "nocap.csv"
    table.write_text("filename,disease_label\na.jpg,acne\n")
    err = _error(capsys, ["--csv", str(table), "--out", str(tmp_path / "o")])
    assert "nocap.csv" in err and "missing required column(s) caption" in err


def test_non_utf8_bytes(tmp_path, capsys):
    table = tmp_path / "latin1.csv"
    table.write_bytes(b"filename,caption\na.jpg,ok\nb.jpg,caf\xe9 au lait macule\n")
    err = _error(capsys, ["--csv", str(table), "--out", str(tmp_path / "o"),
                          "--no-validate-images"])
    assert "latin1.csv" in err and "line 3" in err and "column 'caption'" in err
    assert "not UTF-8" in err


def test_truncated_file(tmp_path, capsys):
    table = tmp_path / "cut.csv"
    table.write_text('filename,caption\na.jpg,"fine"\nb.jpg,"this quote never clo')
    err = _error(capsys, ["--csv", str(table), "--out", str(tmp_path / "o"),
                          "--no-validate-images"])
    assert "cut.csv" in err and "line 3" in err and "truncated" in err


def test_parallel_byte_ranges_match_a_serial_run(tmp_path, monkeypatch):
    """Quoted commas and newlines inside captions never split a row between ranges."""
    import dermvlm.data.tables as tables
    table = tmp_path / "big.csv"
    lines = ["filename,caption,disease_label"]
    for i in range(300):
        caption = f'"row {i}, with a comma"' if i % 3 else f'"row {i}\nspans two lines"'
        lines.append(f"img/{i}.jpg,{caption},{'acne' if i % 5 else ''}")
    lines.append("img/short.jpg")
    table.write_text("\n".join(lines) + "\n")
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    base = ["--csv", str(table), "--no-validate-images", "--quiet"]
    derm1m.main(base + ["--out", str(serial), "--workers", "1"])
    monkeypatch.setattr(tables, "CHUNK_BYTES", 512)
    assert len(tables.byte_ranges(table, 512)) > 5
    derm1m.main(base + ["--out", str(parallel), "--workers", "2"])
    assert (serial / "manifest.jsonl").read_text() == (parallel / "manifest.jsonl").read_text()
    assert (serial / "rejects.csv").read_text() == (parallel / "rejects.csv").read_text()
    report = json.loads((parallel / "report.json").read_text())
    assert report["byte_ranges"] > 5 and report["rows_read"] == 301 and report["rejected"] == 1
    assert "big.csv:402" in _rejects(parallel)  # 300 rows, 100 with a quoted newline
