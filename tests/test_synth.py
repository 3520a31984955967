"""SynthDerm: determinism, formats, and attributes that are visibly rendered."""
import csv
import dataclasses
import json

import numpy as np
import pytest
from scipy import ndimage

from dermvlm import vocab
from dermvlm.config import SynthConfig
from dermvlm.questions import load_questions
from dermvlm.report import LesionReport
from dermvlm.ontology import SYNTH_CONDITIONS as CONDITIONS
from dermvlm.synth.render import render
from dermvlm.synth.sample import sample_attributes
from dermvlm.synth.writer import generate
from dermvlm.synth.sample import holdout_pairs
from dermvlm.synth.writer import DERM1M_COLUMNS


def _pixels(attrs, size=128):
    return np.asarray(render(attrs, size), dtype=np.float32) / 255.0


def _plain(condition="melanocytic nevus", **changes):
    """A clean clinical sample (no artefacts) with chosen attributes."""
    attrs = sample_attributes(SynthConfig(seed=1, artefact_prob=0.0, dermoscopic_fraction=0.0,
                                          conditions=(condition,)), 0)
    return dataclasses.replace(attrs, **changes)


def test_ontology_is_consistent_with_the_vocabulary():
    assert len(CONDITIONS) >= 24
    for c in CONDITIONS:
        assert 3 <= len(c.hierarchy) <= 4, c.name
        assert set(c.lesion_types) <= set(vocab.LESION_TYPES), c.name
        assert set(c.colours) <= set(vocab.COLOURS), c.name
        assert set(c.shapes) <= set(vocab.SHAPES) and set(c.sizes) <= set(vocab.SIZES)
        assert set(c.counts) <= set(vocab.COUNTS), c.name
        assert set(c.distributions) <= set(vocab.DISTRIBUTIONS), c.name
        assert set(c.surfaces) <= set(vocab.SURFACES), c.name
        assert set(c.secondary) <= set(vocab.SECONDARY_CHANGES), c.name
        assert set(c.sites) <= set(vocab.BODY_SITES), c.name
        assert c.category in vocab.CATEGORIES and c.malignancy in vocab.MALIGNANCY


def test_lesion_sizes_follow_the_morphological_definitions():
    """A macule, papule or vesicle is under 1 cm and a patch, plaque, bulla or nodule at
    least 1 cm; the size class always matches the drawn diameter."""
    seen = set()
    for index in range(600):
        attrs = sample_attributes(SynthConfig(seed=7), index)
        low, high = vocab.LESION_SIZE_MM.get(attrs.lesion_type, (0.0, 1e9))
        assert low <= attrs.size_mm <= high, (attrs.lesion_type, attrs.size_mm)
        assert attrs.size == vocab.size_class(attrs.size_mm)
        seen.add(attrs.lesion_type)
    assert {"macule", "patch", "papule", "plaque"} <= seen


def test_same_seed_same_pixels_other_seed_other_pixels():
    config = SynthConfig(seed=3)
    a, b = render(sample_attributes(config, 5), 96), render(sample_attributes(config, 5), 96)
    assert a.tobytes() == b.tobytes()
    other = render(sample_attributes(SynthConfig(seed=4), 5), 96)
    assert other.tobytes() != a.tobytes()


def test_generate_is_deterministic(tmp_path):
    config = SynthConfig(n=6, size=64, seed=11)
    generate(config, tmp_path / "a", progress=False)
    generate(dataclasses.replace(config, workers=2), tmp_path / "b", progress=False)
    for name in ("derm1m.csv", "attributes.jsonl", "vqa_llava.json", "reports.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    for image in (tmp_path / "a" / "images").iterdir():
        assert image.read_bytes() == (tmp_path / "b" / "images" / image.name).read_bytes()


def test_derm1m_csv_has_the_exact_columns_and_valid_paths(synth_dir):
    with open(synth_dir / "derm1m.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == DERM1M_COLUMNS
    tree = json.loads((synth_dir / "ontology.json").read_text())
    for row in rows:
        assert (synth_dir / row["filename"]).is_file()
        path = [p.strip() for p in row["hierarchical_disease_label"].split(",")]
        assert path[-1] == row["disease_label"]
        assert path[0] in tree["root"]
        assert all(child in tree[parent] for parent, child in zip(path, path[1:]))
        assert tree[row["disease_label"]] == []
        assert row["caption"].startswith(row["truncated_caption"].rstrip("."))
        assert row["age"].isdigit() or row["age"] == "No age information"
    assert any(r["body_location"] == "No body location information" for r in rows)


def test_skincon_table_columns(synth_dir):
    with open(synth_dir / "skincon.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header == ["ImageID", *vocab.SKINCON_CONCEPTS, "Do not consider this image"]
    assert len(vocab.SKINCON_CONCEPTS) == 48


def test_llava_conversations_are_well_formed(synth_dir):
    records = json.loads((synth_dir / "vqa_llava.json").read_text())
    assert len(records) == 40 * 2  # tiny preset: two conversations per image
    for record in records:
        assert set(record) == {"id", "image", "conversations"}
        turns = record["conversations"]
        assert len(turns) % 2 == 0 and len(turns) >= 2
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        text = "".join(t["value"] for t in turns)
        assert text.count("<image>") == 1 and turns[0]["value"].startswith("<image>\n")
        assert all(t["value"].strip() for t in turns)


def test_reports_validate_against_the_schema(synth_dir):
    lines = (synth_dir / "reports.jsonl").read_text().splitlines()
    assert len(lines) == 40
    for line in lines:
        report = LesionReport.model_validate(json.loads(line)["report"])
        assert report.differential[0].likelihood >= report.differential[-1].likelihood


def test_benchmark_answers_fit_the_question_schema(synth_dir):
    questions = {q.id: q for q in load_questions(synth_dir / "dermabench_questions.json")}
    assert len(questions) == 22
    rows = [json.loads(x) for x in (synth_dir / "dermabench_answers.jsonl").read_text()
            .splitlines()]
    assert len(rows) == 40 * 22
    for row in rows:
        q = questions[row["question_id"]]
        if q.type == "single":
            assert row["answer"] in q.options, row
        elif q.type == "multi":
            assert row["answer"] and set(row["answer"]) <= set(q.options), row
        else:
            assert isinstance(row["answer"], str) and len(row["answer"]) > 10


def test_captions_read_as_sentences():
    """Prepositional border words follow the noun ('a single red patch with blurred margins',
    not 'a single with blurred margins red patch') and no full stop is left hanging."""
    import re
    from dermvlm.synth.text import COUNT_WORDS, caption
    from dermvlm.vocab import LESION_PLURALS as PLURALS
    counts = "|".join(w for words in COUNT_WORDS.values() for w in words)
    seen_border_phrase = 0
    for index in range(400):
        attrs = sample_attributes(SynthConfig(seed=3), index)
        text = caption(attrs, np.random.default_rng(index))
        assert not re.search(rf"\b({counts}) with\b", text, re.IGNORECASE), text
        assert " ." not in text and ".." not in text, text
        noun = PLURALS[attrs.lesion_type] if attrs.count != "single" else attrs.lesion_type
        assert re.search(rf"\b{noun}\b", text), (noun, text)
        seen_border_phrase += f"{noun} with blurred margins" in text
    assert seen_border_phrase > 0


def test_darker_skin_type_gives_darker_background():
    means = [_pixels(_plain(fitzpatrick=t)).mean() for t in vocab.FITZPATRICK_TYPES]
    assert all(a > b for a, b in zip(means, means[1:])), means


def test_lesion_colour_moves_pixel_statistics():
    def redness(colour):
        px = _pixels(_plain(colours=[colour], size="large", size_mm=30.0, fitzpatrick=2))
        return float((px[..., 0] - px[..., 2]).mean())
    assert redness("red") > redness("brown") > redness("blue-grey")
    white = _pixels(_plain(colours=["white"], size="large", size_mm=30.0, fitzpatrick=5))
    brown = _pixels(_plain(colours=["dark brown"], size="large", size_mm=30.0, fitzpatrick=5))
    assert white.mean() > brown.mean()


def _components(attrs):
    px = _pixels(attrs, 192)
    background = np.median(px.reshape(-1, 3), axis=0)
    lesion = px.mean(-1) < 0.5 * background.mean()  # black lesions on type I skin
    labels, n = ndimage.label(ndimage.binary_opening(lesion))
    sizes = ndimage.sum(lesion, labels, range(1, n + 1))
    return int((sizes >= 4).sum())


def test_count_attribute_changes_connected_components():
    base = dict(lesion_type="macule", colours=["black"], border_definition="well-defined",
                border_regularity="regular", shape="round", size="small", size_mm=4.0,
                surface="smooth", secondary="none", fitzpatrick=1)
    single = _components(_plain(**base, count="single", n_lesions=1, distribution="solitary"))
    many = _components(_plain(**base, count="multiple", n_lesions=8, distribution="linear"))
    assert single == 1
    assert many >= 6


def test_scale_adds_fine_texture_inside_the_lesion():
    def roughness(surface):
        px = _pixels(_plain(lesion_type="plaque", colours=["red"], size="large", size_mm=30.0,
                            surface=surface, secondary="none", fitzpatrick=2), 160)
        centre = px[60:100, 60:100].mean(-1)
        return float(np.abs(ndimage.laplace(centre)).mean())
    assert roughness("scaly") > 2 * roughness("smooth")


def test_modality_and_artefacts_are_visible():
    clinical = _pixels(_plain())
    dermoscopic = _pixels(_plain(modality="dermoscopic"))
    assert clinical[:6, :6].mean() > 0.3 and dermoscopic[:6, :6].mean() < 0.05
    dark = _pixels(_plain(artefacts=["low light"], image_quality="poor"))
    assert dark.mean() < 0.6 * clinical.mean()


def test_compositional_holdout_and_skin_type_shift():
    pairs = holdout_pairs()
    assert pairs
    train = [sample_attributes(SynthConfig(seed=2, holdout="compositional"), i)
             for i in range(150)]
    test = [sample_attributes(SynthConfig(seed=2, holdout="compositional", split="test"), i)
            for i in range(60)]
    assert all((a.lesion_type, a.colours[0]) not in pairs for a in train)
    assert all((a.lesion_type, a.colours[0]) in pairs for a in test)
    shifted = [sample_attributes(SynthConfig(seed=2, skin_types=(5, 6)), i) for i in range(50)]
    assert {a.fitzpatrick for a in shifted} == {5, 6}


@pytest.mark.parametrize("fitzpatrick", [1, 6])
def test_every_condition_renders_at_small_and_odd_sizes(fitzpatrick):
    for i, condition in enumerate(CONDITIONS):
        attrs = _plain(condition.name, fitzpatrick=fitzpatrick)
        for size in (32, 97):
            image = render(attrs, size)
            assert image.size == (size, size) and image.mode == "RGB"
