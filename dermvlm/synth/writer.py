"""Generate a SynthDerm set on disk, in the real formats.

    out/
      images/<image_id>.jpg            rendered RGB images
      attributes.jsonl                 full ground truth, one object per image
      derm1m.csv + ontology.json       Derm1M-style pairs (exact columns, placeholder strings)
      skincon.csv                      SkinCon-style concept table (48 concept columns)
      vqa_llava.json                   LLaVA conversations (open, multiple choice, report)
      reports.jsonl                    one `LesionReport` per image
      dermabench_questions.json        the 22-question schema
      dermabench_answers.jsonl         one row per image x question
      summary.json                     counts and settings
"""
import csv
import json
import os
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tqdm import tqdm

from dermvlm import vocab
from dermvlm.errors import DermvlmError
from dermvlm.questions import DEFAULT_QUESTIONS, questions_to_json
from dermvlm.ontology import ontology_tree
from dermvlm.synth.render import render
from dermvlm.synth.sample import SampleAttributes, sample_attributes
from dermvlm.synth.text import texts_for

DERM1M_COLUMNS = ("filename", "caption", "truncated_caption", "disease_label",
                  "hierarchical_disease_label", "skin_concept", "source", "source_type",
                  "body_location", "symptoms", "age", "gender")
PLACEHOLDERS = {"age": "No age information", "gender": "No gender information",
                "body_location": "No body location information",
                "symptoms": "No symptom information", "skin_concept": "No visual concepts",
                "disease_label": "No definitive diagnosis"}


def skincon_concepts(attrs):
    """The SkinCon concepts a sample shows, in SkinCon column order."""
    values = [attrs.lesion_type, *attrs.colours, attrs.surface, attrs.secondary]
    present = {c for v in values for c in vocab.ATTRIBUTE_TO_SKINCON.get(v, ())}
    return [c for c in vocab.SKINCON_CONCEPTS if c in present]


def _make_one(job):
    """Render, save and describe image `index`; returns plain dicts (picklable for workers)."""
    config, index, out_dir = job
    attrs = sample_attributes(config, index)
    image_rel = f"images/{attrs.image_id}.jpg"
    render(attrs, config.size).save(out_dir / image_rel, quality=config.jpeg_quality)
    texts = texts_for(attrs, image_rel, config.vqa_per_image, config.letter_answers)
    texts["report"] = texts["report"].model_dump(exclude_none=True)
    return attrs.to_dict(), image_rel, texts


def derm1m_row(attrs, image_rel, texts):
    concepts = skincon_concepts(attrs)
    hidden_site = attrs.index % 10 == 7  # some rows lack a site, as in the real data
    return {
        "filename": image_rel, "caption": texts["caption"],
        "truncated_caption": texts["truncated_caption"], "disease_label": attrs.condition,
        "hierarchical_disease_label": ", ".join(attrs.hierarchy),
        "skin_concept": ", ".join(concepts) or PLACEHOLDERS["skin_concept"],
        "source": "SynthDerm", "source_type": "synthetic",
        "body_location": PLACEHOLDERS["body_location"] if hidden_site else attrs.body_site,
        "symptoms": ", ".join(attrs.symptoms) or PLACEHOLDERS["symptoms"],
        "age": str(attrs.age) if attrs.age is not None else PLACEHOLDERS["age"],
        "gender": attrs.gender or PLACEHOLDERS["gender"],
    }


def _prepare_output(out_dir):
    out_dir = Path(out_dir)
    try:
        (out_dir / "images").mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write_test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise DermvlmError(f"cannot write to output folder {out_dir}: "
                           f"{exc.strerror or exc}") from None
    return out_dir


def generate(config, out_dir, progress=True):
    """Write a SynthDerm set for `config` (a SynthConfig) into out_dir; returns the summary."""
    if config.n < 1:
        raise DermvlmError(f"n must be a positive number of images, got {config.n}")
    if config.size < 32:
        raise DermvlmError(f"size must be at least 32 pixels, got {config.size}")
    out_dir = _prepare_output(out_dir)
    start = time.perf_counter()
    jobs = ((config, i, out_dir) for i in range(config.n))
    bar = dict(total=config.n, desc="synthderm", unit="img", disable=not progress)
    if config.workers > 1:
        with ProcessPoolExecutor(config.workers) as pool:
            results = list(tqdm(pool.map(_make_one, jobs, chunksize=16), **bar))
    else:
        results = list(tqdm(map(_make_one, jobs), **bar))
    results = [(SampleAttributes.from_dict(a), rel, texts) for a, rel, texts in results]
    _write_tables(out_dir, results)
    elapsed = time.perf_counter() - start
    summary = _summary(config, out_dir, results, elapsed)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _write_tables(out_dir, results):
    with open(out_dir / "attributes.jsonl", "w") as f:
        for attrs, _, _ in results:
            f.write(json.dumps(attrs.to_dict()) + "\n")
    with open(out_dir / "derm1m.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=DERM1M_COLUMNS)
        writer.writeheader()
        for attrs, image_rel, texts in results:
            writer.writerow(derm1m_row(attrs, image_rel, texts))
    (out_dir / "ontology.json").write_text(json.dumps(ontology_tree(), indent=1))
    with open(out_dir / "skincon.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ImageID", *vocab.SKINCON_CONCEPTS, "Do not consider this image"])
        for attrs, image_rel, _ in results:
            present = set(skincon_concepts(attrs))
            writer.writerow([image_rel, *(int(c in present) for c in vocab.SKINCON_CONCEPTS),
                             int(attrs.image_quality == "poor")])
    vqa = [record for _, _, texts in results for record in texts["vqa"]]
    (out_dir / "vqa_llava.json").write_text(json.dumps(vqa, indent=1))
    with open(out_dir / "reports.jsonl", "w") as f:
        for attrs, image_rel, texts in results:
            f.write(json.dumps({"image_id": attrs.image_id, "image": image_rel,
                                "report": texts["report"]}) + "\n")
    (out_dir / "dermabench_questions.json").write_text(questions_to_json(DEFAULT_QUESTIONS))
    with open(out_dir / "dermabench_answers.jsonl", "w") as f:
        for attrs, image_rel, texts in results:
            for qid, answer in texts["answers"].items():
                f.write(json.dumps({"image_id": attrs.image_id, "image": image_rel,
                                    "question_id": qid, "answer": answer,
                                    "fitzpatrick": attrs.fitzpatrick}) + "\n")


def _summary(config, out_dir, results, elapsed):
    def count(key):
        return dict(sorted(Counter(str(getattr(a, key)) for a, _, _ in results).items()))
    disk = sum(f.stat().st_size for f in out_dir.rglob("*") if f.is_file())
    return {
        "n": len(results), "seed": config.seed, "split": config.split, "size": config.size,
        "holdout": config.holdout, "seconds": round(elapsed, 2),
        "images_per_second": round(len(results) / max(elapsed, 1e-9), 1),
        "bytes_on_disk": disk, "conditions": count("condition"),
        "fitzpatrick": count("fitzpatrick"), "modality": count("modality"),
        "image_quality": count("image_quality"), "out_dir": os.fspath(out_dir),
    }
