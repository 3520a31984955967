"""Skin tone without labels (ITA) and labelled folders as benchmarks."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermvlm.skintone import ita_degrees, ita_group, srgb_to_lab

REAL = Path(__file__).parent.parent.parent / "shared" / "realdata" / "isic9" / "Test"


def test_lab_conversion_equals_scikit_image():
    from skimage.color import rgb2lab
    rgb = np.random.default_rng(0).random((50, 3))
    assert np.allclose(srgb_to_lab(rgb), rgb2lab(rgb[None])[0], atol=1e-2)   # constants


@pytest.mark.parametrize("rgb, group", [((250, 225, 210), "very light"),
                                        ((225, 180, 150), "light"),
                                        ((150, 95, 65), "brown"),
                                        ((70, 45, 35), "dark")])
def test_ita_of_a_plain_skin_colour_and_its_chardon_group(rgb, group):
    image = Image.new("RGB", (64, 64), rgb)
    lab = srgb_to_lab(np.array(rgb) / 255)
    expected = np.degrees(np.arctan((lab[0] - 50) / lab[2]))
    assert ita_degrees(image) == pytest.approx(expected, abs=1e-6)
    assert ita_group(ita_degrees(image)) == group


def test_ita_reads_the_border_not_the_lesion():
    image = Image.new("RGB", (96, 96), (240, 215, 195))               # light skin
    image.paste((40, 20, 20), (20, 20, 76, 76))                       # a dark centred lesion
    assert ita_group(ita_degrees(image)) == "very light"
    aperture = Image.new("RGB", (96, 96), (0, 0, 0))                   # all black: no skin
    assert ita_degrees(aperture) is None and ita_group(None) == "unknown"


def test_a_labelled_folder_becomes_a_benchmark(synth_dir, tmp_path, capsys):
    from data_recipes import folder_benchmark
    from dermvlm.bench.run import run_benchmark
    root = tmp_path / "folder"
    attrs = [json.loads(x) for x in (synth_dir / "attributes.jsonl").read_text().splitlines()]
    for a in attrs:
        (root / a["condition"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(synth_dir / "images" / f"{a['image_id']}.jpg", root / a["condition"])
    assert folder_benchmark.main(["--root", str(root), "--out", str(tmp_path / "bench"),
                                  "--modality", "clinical", "--skin-tone", "ita"]) == 0
    questions = json.loads((tmp_path / "bench" / "questions.json").read_text())["questions"]
    assert [q["id"] for q in questions] == ["diagnosis", "malignancy", "modality"]
    assert questions[0]["options"] == sorted({a["condition"] for a in attrs})
    results = run_benchmark(tmp_path / "bench" / "questions.json",
                            tmp_path / "bench" / "answers.jsonl", "reference",
                            tmp_path / "run", progress=False)
    assert results["n_items"] == 3 * len(attrs) and results["by_type"]["single"]["primary"] == 1
    assert set(results["by_fitzpatrick"]["groups"]) - {"unknown"}        # ITA groups used
    assert folder_benchmark.main(["--root", str(root), "--out", str(tmp_path / "x"),
                                  "--malignant", "no such class"]) == 2
    assert "not a class folder" in capsys.readouterr().err


@pytest.mark.skipif(not REAL.is_dir(), reason="no ../shared/realdata beside the project")
def test_isic9_test_becomes_a_benchmark(tmp_path):
    from data_recipes import folder_benchmark
    assert folder_benchmark.main(["--root", str(REAL), "--out", str(tmp_path), "--modality",
                                  "dermoscopic", "--benign", "nevus,pigmented benign "
                                  "keratosis,seborrheic keratosis,vascular lesion"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert len({r["image"] for r in rows}) == 91 and len(rows) == 3 * 91
    melanoma = next(r for r in rows if r["question_id"] == "malignancy" and
                    "/melanoma/" in r["image"])
    assert melanoma["answer"] == "malignant"
