"""Real images and their labels: the recipes read the real tables in ../shared/realdata,
captions and chats say only what a label says, the real-image metrics equal a reference
library's, and the malignancy operating point flags what it was fitted to flag."""
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dermvlm.case import (Case, agrees, checked_reply, named_conditions, reasons_hold,
                          reply_concern)
from dermvlm.chat import HEDGE, REDIRECTS, label_chat, question_kind, synth_chat
from dermvlm.errors import DataError
from dermvlm.labeltext import ISIC9_CLASSES, LabelTruth
from dermvlm.ontology import CONDITIONS, SYNTH_CONDITIONS, find_condition
from dermvlm.vocab import COLOURS

REALDATA = Path(__file__).resolve().parents[2] / "shared/realdata"
TABLES = REALDATA / "tables"
needs_realdata = pytest.mark.skipif(not TABLES.is_dir(), reason="../shared/realdata not here")


def test_every_real_class_is_in_the_ontology_and_synthderm_keeps_its_29():
    assert len(SYNTH_CONDITIONS) == 29 and len(CONDITIONS) == 31
    assert {find_condition(c).name for c in ISIC9_CLASSES} >= {
        "melanocytic nevus", "seborrhoeic keratosis", "pigmented benign keratosis",
        "vascular lesion"}
    assert find_condition("Seborrheic_Keratosis").name == "seborrhoeic keratosis"
    assert find_condition("psoriasis vulgaris").name == "psoriasis"
    assert find_condition("not a disease") is None


def test_label_captions_name_the_diagnosis_and_table_fields_but_no_colour():
    truth = LabelTruth.from_label("nevus", modality="dermoscopic", age=45, sex="female",
                                  site="back")
    text = " ".join(truth.captions())
    assert "melanocytic nevus" in text and "benign" in text
    assert "45-year-old woman" in text and "on the back" in text
    assert not any(re.search(rf"\b{re.escape(c)}\b", text) for c in COLOURS)
    assert "border" not in text
    assert LabelTruth.from_label("nevus").patient_sentence() == ""
    assert LabelTruth.from_label("nevus", age=8).patient_sentence() == "The patient is 8 years old."
    with pytest.raises(DataError, match="'lichen sclerosus' is not in the ontology"):
        LabelTruth.from_label("lichen sclerosus")


def test_closed_questions_put_the_truth_among_four_options():
    truth = LabelTruth.from_label("melanoma", modality="dermoscopic")
    diagnosis, malignancy = truth.closed_questions(np.random.default_rng(0))
    question, answer = diagnosis[0]["value"], diagnosis[1]["value"]
    letter = answer[-3]
    assert f"{letter}. melanoma" in question and question.count("\n") == 6
    assert malignancy[1]["value"].startswith("Features suggest a malignant")


def test_a_real_chat_reasons_in_order_and_names_no_visual_attribute():
    truth = LabelTruth.from_label("basal cell carcinoma", modality="dermoscopic", age=70,
                                  sex="male", site="face")
    for seed in range(20):
        turns = label_chat(truth, np.random.default_rng(seed), ISIC9_CLASSES)
        assert turns[0]["from"] == "system" and turns[0]["value"].startswith(
            "Image analysis: basal cell carcinoma")
        assert turns[1]["value"].startswith("<image>\n")
        replies = " ".join(t["value"] for t in turns if t["from"] == "gpt")
        assert not any(re.search(rf"\b{re.escape(c)}\b", replies) for c in COLOURS)
        for question, reply in zip(turns[1::2], turns[2::2]):
            kind = question_kind(question["value"])
            if kind == "advice":
                assert agrees(reply["value"], "malignant") and HEDGE in reply["value"]
            if kind == "differential":
                assert len(named_conditions(reply["value"])) >= 3
            if kind in REDIRECTS:
                assert reply["value"] == REDIRECTS[kind]


def test_a_synthderm_chat_describes_the_true_findings(synth_dir):
    from types import SimpleNamespace

    from dermvlm.synth.text import differential
    attrs = json.loads((synth_dir / "attributes.jsonl").read_text().splitlines()[0])
    rng = np.random.default_rng(0)
    turns = synth_chat(attrs, differential(SimpleNamespace(**attrs), rng), rng)
    describe = next(t["value"] for q, t in zip(turns[1::2], turns[2::2])
                    if question_kind(q["value"]) == "describe")
    assert attrs["lesion_type"] in describe or attrs["lesion_type"][:-1] in describe
    assert all(colour in describe for colour in attrs["colours"])
    assert attrs["body_site"] in describe


@pytest.mark.parametrize("message, kind", [
    ("What is the capital of Peru?", "off_topic"), ("Tell me about the stock market.",
                                                    "off_topic"),
    ("How many mg of paracetamol can I take?", "dosage"),
    ("Can you definitely rule out cancer?", "definitive"),
    ("Describe this lesion.", "describe"), ("What else could it be?", "differential"),
    ("Should I see a doctor about it?", "advice"), ("Why do you think so?", "why"),
    ("What is the most likely diagnosis?", "diagnosis"), ("Is it itchy usually?", "other")])
def test_question_kinds(message, kind):
    assert question_kind(message) == kind


def test_reply_concern_reads_negation():
    assert reply_concern("It appears benign.") == "low"
    assert reply_concern("It is not cancer, but see a doctor promptly.") == "low"
    assert reply_concern("Melanoma is a malignant skin cancer.") == "high"
    assert reply_concern("It is premalignant (precancerous).") == "moderate"


def test_checked_replies_follow_the_case_and_carry_the_hedge():
    labels = [c.name for c in CONDITIONS]
    probs = np.full(len(labels), 0.01)
    probs[labels.index("melanoma")] = 0.6
    case = Case.from_probabilities(list(probs), labels)
    assert case.top == "melanoma" and case.concern == "high"
    fixed = checked_reply("advice", "It appears benign.", case)
    assert agrees(fixed, "malignant") and HEDGE in fixed
    assert checked_reply("diagnosis", "It is a nevus.", case).startswith(
        "The most likely diagnosis is melanoma")
    assert checked_reply("describe", "A brown plaque.", case) == "A brown plaque."
    # a benign top diagnosis with a risky runner-up: the threshold raises the concern
    probs = np.full(len(labels), 0.0)
    probs[labels.index("melanocytic nevus")], probs[labels.index("melanoma")] = 0.55, 0.45
    assert Case.from_probabilities(list(probs), labels).concern == "low"
    raised = Case.from_probabilities(list(probs), labels, threshold=0.3)
    assert raised.concern == "moderate" and raised.raised
    assert not agrees(checked_reply("advice", "It appears benign.", raised), "benign")


def _raised_case(findings=None):
    labels = [c.name for c in CONDITIONS]
    probs = np.full(len(labels), 0.0)
    for name, p in (("seborrhoeic keratosis", 0.4), ("melanocytic nevus", 0.3),
                    ("dermatofibroma", 0.2), ("melanoma", 0.06), ("actinic keratosis", 0.04)):
        probs[labels.index(name)] = p
    return Case.from_probabilities(list(probs), labels, threshold=0.05, findings=findings)


def test_a_raised_concern_is_stated_in_the_diagnosis_differential_and_advice():
    case = _raised_case()
    assert case.raised and case.risky == "melanoma" and case.concern == "moderate"
    for kind in ("diagnosis", "differential", "advice"):
        reply = checked_reply(kind, "The most likely diagnosis is seborrhoeic keratosis.", case)
        names = named_conditions(reply)
        assert names[0] == "seborrhoeic keratosis" and "melanoma" in names, kind
        assert reply_concern(reply) != "low" and reply.endswith(HEDGE), kind
    assert "Do not wait" in checked_reply("watch", "Watch for change.", case)


def test_the_differential_is_written_from_the_case_with_true_malignancy_and_reasons():
    seen = {"lesion_type": "macule", "colours": ["brown"], "modality": "clinical"}
    # the model once called a risky look-alike "a benign look-alike"; the case decides
    reply = checked_reply("differential", "Seborrhoeic keratosis is most likely. Also "
                          "consider melanoma (a benign look-alike).", _raised_case(seen))
    assert "melanoma (malignant)" in reply and "benign look-alike" not in reply
    assert "melanocytic nevus (benign, 30 %; for it: a macule lesion, brown colour)" in reply
    assert reasons_hold(reply)
    assert not reasons_hold("Also consider melanoma: a macule lesion fits, but brown colour "
                            "does not.")                  # melanoma is brown in the ontology
    assert reasons_hold("Because of a plaque lesion and brown colour, typical of melanoma.")


def test_descriptions_and_reasons_are_held_to_the_findings_seen():
    seen = {"lesion_type": "macule", "colours": ["brown"], "modality": "clinical"}
    case = _raised_case(seen)
    assert checked_reply("describe", "I see multiple red and pink papules with a scaly "
                         "surface, on the back.", case) == \
        "I see multiple brown macules with a scaly surface, on the back."
    # a real-image description names no finding: the case adds what it sees
    assert checked_reply("describe", "This is a dermoscopic image of a single skin lesion.",
                         case) == ("This is a clinical image of a single skin lesion. It "
                                   "shows a brown macule.")
    # the model once wrote "its primary lesion is brown colour": "why" comes from the case
    why = checked_reply("why", "Because of a papule lesion, which ranks melanoma second.", case)
    assert why == ("The image analysis ranks seborrhoeic keratosis first (40 %); of what it "
                   "sees, for it: brown colour; against it: a macule lesion. Only an "
                   "examination, often with a biopsy, can confirm it.")
    assert reasons_hold(why)


def test_zeroshot_findings_take_the_best_type_and_a_close_second_colour():
    import torch

    from dermvlm.vocab import MODALITIES
    from dermvlm.zeroshot import FINDING_LESION_TYPES, zeroshot_findings
    assert "cyst" not in FINDING_LESION_TYPES            # no condition presents as one

    class Scores:                                        # logits per candidate, by prompt
        def logits(self, features, labels, templates):
            table = {"nodule": 5.0, "brown": 3.0, "black": 2.8, "red": 0.5,
                     "clinical photograph": 1.0}
            return torch.tensor([[table.get(label, 0.0) for label in labels]] * len(features))
    found = zeroshot_findings(Scores(), torch.zeros(2, 4))
    assert found[0] == {"lesion_type": "nodule", "colours": ["brown", "black"],
                        "modality": MODALITIES[0], "modality_confidence": pytest.approx(
                            1 / (1 + math.exp(-1)), abs=1e-4)} and len(found) == 2
    assert zeroshot_findings(Scores(), torch.zeros(1, 4), second_colour=0.9)[0][
        "colours"] == ["brown"]


def test_the_operating_point_flags_the_target_share_of_positives():
    from dermvlm.trust import fit_malignancy_threshold
    rng = np.random.default_rng(0)
    scores, positive = rng.random(400), rng.random(400) < 0.4
    threshold = fit_malignancy_threshold(scores, positive, sensitivity=0.9)
    assert (scores[positive] >= threshold).mean() >= 0.9
    assert (scores[positive] >= threshold + 1e-9).mean() < 0.9      # the highest such one
    from dermvlm.bench.metrics import wilson_interval
    bounded = fit_malignancy_threshold(scores, positive, sensitivity=0.9, bound=True)
    n = int(positive.sum())
    flagged = int((scores[positive] >= bounded).sum())
    assert bounded < threshold and wilson_interval(flagged, n)[0] >= 0.9
    assert wilson_interval(int((scores[positive] >= bounded + 1e-9).sum()), n)[0] < 0.9
    assert fit_malignancy_threshold(scores[:5], [True] * 5, 0.9, bound=True) == scores[:5].min()


def test_balanced_accuracy_and_auroc_equal_sklearn():
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    from dermvlm.clip.evaluate import balanced_accuracy, malignancy_metrics
    rng = np.random.default_rng(1)
    labels = ["melanoma", "nevus", "basal cell carcinoma", "dermatofibroma"]
    truth = rng.integers(0, 4, 200)
    probs = rng.dirichlet(np.ones(4), 200)
    probs[np.arange(200), truth] += 0.3
    probs /= probs.sum(1, keepdims=True)
    assert balanced_accuracy(probs.argmax(1), truth) == pytest.approx(
        balanced_accuracy_score(truth, probs.argmax(1)))
    block = malignancy_metrics(probs, labels, truth)
    positive = np.isin(truth, [0, 2])
    assert block["auroc"] == pytest.approx(roc_auc_score(positive, probs[:, [0, 2]].sum(1)),
                                           abs=1e-4)
    flagged = np.isin(probs.argmax(1), [0, 2])
    assert block["sensitivity"] == pytest.approx(flagged[positive].mean(), abs=1e-4)
    assert block["specificity"] == pytest.approx((~flagged[~positive]).mean(), abs=1e-4)
    low, high = block["auroc_ci"]
    assert low < block["auroc"] < high
    assert malignancy_metrics(probs, ["melanoma", "x", "y", "z"], truth) == {}


def test_a_protected_split_keeps_its_images_and_the_copies_are_rejected(tmp_path):
    from dermvlm.data.convert import Converter
    from dermvlm.data.records import Record
    rng = np.random.default_rng(0)
    paths = []
    for name in ("test", "copy", "other"):
        pixels = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8) if name != "copy" else \
            np.clip(np.asarray(Image.open(paths[0])).astype(int) + 1, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{name}.png")
        paths.append(tmp_path / f"{name}.png")
    converter = Converter("t", tmp_path / "out", protect_split="test")
    for path, split in zip(paths, ("test", "train", "train")):
        converter.read += 1
        converter.accept(Record(image=str(path), split=split, row_id=path.name))
    report = converter.finish(quiet=True)
    assert report["written"] == 2 and report["rejected"] == 1
    assert report["reject_reasons"] == {"leakage": 1}
    assert "near-duplicate of test image test.png" in (tmp_path / "out/rejects.csv").read_text()


@needs_realdata
def test_isic9_recipe_keeps_test_whole_and_lesions_on_one_side(tmp_path):
    from data_recipes.isic9 import main
    assert main(["--root", str(REALDATA / "isic9"), "--out", str(tmp_path), "--quiet"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["rows_read"] == 2251 == report["written"] + report["rejected"]
    records = [json.loads(line) for line in (tmp_path / "manifest.jsonl").open()]
    assert sum(r["split"] == "test" for r in records) == 91
    lesions = {}
    for r in records:
        lesions.setdefault(r["meta"]["lesion_id"], set()).add(r["split"])
    assert all(len(splits) == 1 for splits in lesions.values())
    assert any(lid.startswith("HAM_") for lid in lesions)
    rejects = (tmp_path / "rejects.csv").read_text()
    assert "Test/" not in "".join(line.split(",")[0] for line in rejects.splitlines())


@needs_realdata
@pytest.mark.parametrize("recipe, table, images, read, written", [
    ("ham10000", "ham10000/HAM10000_metadata.csv", "isic9", 10015, 1348),
    ("pad_ufes20", "pad-ufes-20/metadata.csv", None, 2298, 0),
])
def test_table_recipes_count_every_real_row(tmp_path, recipe, table, images, read, written):
    import importlib
    main = importlib.import_module(f"data_recipes.{recipe}").main
    args = ["--csv", str(TABLES / table), "--out", str(tmp_path), "--quiet"]
    args += ["--images", str(REALDATA / images)] if images else []
    main(args)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["rows_read"] == read and report["written"] == written
    assert report["rows_read"] == report["written"] + report["rejected"]
    if written < read:
        assert report["reject_reasons"] == {"missing image": read - written}
    if written:
        first = json.loads((tmp_path / "manifest.jsonl").open().readline())
        assert first["meta"]["lesion_id"].startswith("HAM_") and first["meta"]["conversations"]


@needs_realdata
def test_isic2019_one_hot_rows_without_opening_images(tmp_path):
    from data_recipes.isic2019 import main
    table = tmp_path / "gt.csv"
    lines = (TABLES / "isic/ISIC_2019_Training_GroundTruth.csv").read_text().splitlines()
    table.write_text("\n".join(lines[:301] + ["ISIC_X,1,1,0,0,0,0,0,0,0",
                                              "ISIC_Y,0,0,0,0,0,0,0,0,1"]) + "\n")
    main(["--csv", str(table), "--out", str(tmp_path / "out"), "--no-validate-images",
          "--quiet", "--workers", "1"])
    report = json.loads((tmp_path / "out/report.json").read_text())
    assert report["rows_read"] == 302 and report["written"] == 300
    assert report["reject_reasons"] == {"bad value": 1, "unknown label": 1}


def test_a_missing_or_malformed_table_is_one_clear_line(tmp_path, capsys):
    from data_recipes.ham10000 import main
    assert main(["--csv", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o")]) == 2
    assert "nope.csv: cannot open" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    bad.write_text("image_id,dx\nISIC_1,mel\n")
    assert main(["--csv", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lesion_id" in err


def test_the_chat_score_reads_the_stated_diagnosis_and_the_advice():
    from types import SimpleNamespace

    from eval.chat import score, summarise
    labels = [c.name for c in CONDITIONS]
    probs = np.full(len(labels), 0.01)
    probs[labels.index("melanoma")] = 0.7
    case = Case.from_probabilities(list(probs), labels)

    def chat(diagnosis, differential, advice, raw_advice):
        turns = [{"kind": k, "reply": r, "raw": r} for k, r in (
            ("describe", "I see a single brown and black plaque."),
            ("diagnosis", diagnosis), ("differential", differential), ("why", "Because."))]
        turns.insert(3, {"kind": "advice", "reply": advice, "raw": raw_advice})
        attrs = {"lesion_type": "plaque", "colours": ["black"]}
        return {"record": SimpleNamespace(label="melanoma", meta={"attributes": attrs}),
                "kind": "synth", "set": "runs/data/seed1", "case": case, "turns": turns}
    good = score(chat(f"The most likely diagnosis is melanoma. {HEDGE}",
                      "Melanoma is most likely; also consider melanocytic nevus.",
                      f"Melanoma is a malignant skin cancer. {HEDGE}", "It appears benign."))
    assert good["advice_agrees_with_stated"] and not good["raw_advice_agrees_with_stated"]
    assert good["differential_has_truth"] and good["differential_two_or_more"]
    assert good["describes_type_and_colour"] and good["hedged"]
    bad = score(chat("It is a nevus.", "Nevus.", "It appears benign.", "It appears benign."))
    assert bad["advice_agrees_with_stated"] and not bad["advice_matches_truth"]
    assert not bad["differential_two_or_more"] and not bad["hedged"]
    # a benign first diagnosis that does not exclude melanoma, then a concerned advice:
    # a contradiction by the first diagnosis alone, none by what the turn states in all
    hedged = score(chat("Most likely seborrhoeic keratosis. However, melanoma (malignant) "
                        "cannot be excluded.", "Seborrhoeic keratosis; melanoma.",
                        "Please have it examined within weeks; melanoma is not excluded.",
                        "It appears benign."))
    assert not hedged["advice_agrees_with_stated"]
    assert hedged["advice_agrees_with_stated_concern"]
    assert bad["advice_agrees_with_stated_concern"]              # benign and reassuring
    summary = summarise([good, bad])
    assert summary["all"]["differential_has_truth"]["rate"] == 0.5
    assert summary["synth"]["n"] == 2 and "real" not in summary


def test_every_refusal_suite_question_is_redirected_and_no_on_topic_one_is():
    from eval.chat import DOSAGE, OFF_TOPIC, ON_TOPIC, SCRIPT
    from dermvlm.chat import DEFINITIVE_EXAMPLES, DOSAGE_EXAMPLES, OFF_TOPIC_EXAMPLES
    assert not set(OFF_TOPIC + DOSAGE) & set(OFF_TOPIC_EXAMPLES + DOSAGE_EXAMPLES +
                                            DEFINITIVE_EXAMPLES)       # held-out wording
    assert [q for q in OFF_TOPIC + DOSAGE if question_kind(q) not in REDIRECTS] == []
    assert [q for q in ON_TOPIC + SCRIPT if question_kind(q) in REDIRECTS] == []
