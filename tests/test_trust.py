"""Knowing when not to answer (dermvlm.trust): the temperature fit, ECE, the OOD score and its
round trip, the abstained report, and `train.fit_trust` + `dermvlm classify` end to end on a
tiny model."""
import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dermvlm.report import LesionReport, abstained_report, render_report_text
from dermvlm.trust import (ABSTAIN_MESSAGE, TrustModel,
                           expected_calibration_error, fit_temperature, fit_trust,
                           image_statistics)
from tiny_parts import vanilla_open_clip_folder


def test_temperature_fit_recovers_the_temperature_labels_were_drawn_at():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4000, 6, generator=generator) * 6
    targets = torch.multinomial((logits / 3.0).softmax(1), 1, generator=generator)[:, 0]
    assert fit_temperature(logits, targets) == pytest.approx(3.0, rel=0.1)


def test_each_modality_gets_the_temperature_its_labels_were_drawn_at(tmp_path):
    """Phone photos drawn at T = 4 and dermoscopy at T = 1.5 get those temperatures back; a
    modality with too few images keeps the shared one; the fit survives a save and load."""
    from dermvlm.trust import MIN_TEMPERATURE_IMAGES, fit_modality_temperatures
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6000, 6, generator=generator) * 6
    modalities = ["clinical"] * 3000 + ["dermoscopic"] * 3000
    drawn = torch.tensor([[4.0]] * 3000 + [[1.5]] * 3000)
    targets = torch.multinomial((logits / drawn).softmax(1), 1, generator=generator)[:, 0]
    few = MIN_TEMPERATURE_IMAGES - 1
    temperatures, counts = fit_modality_temperatures(
        torch.cat([logits, logits[:few]]), torch.cat([targets, targets[:few]]),
        modalities + ["not skin"] * few)
    assert temperatures["clinical"] == pytest.approx(4.0, rel=0.1)
    assert temperatures["dermoscopic"] == pytest.approx(1.5, rel=0.1)
    assert "not skin" not in temperatures and counts["not skin"] == few
    trust, _, _ = _trust_on_clusters()
    trust.settings.modality_temperature = temperatures
    row = logits[:1]
    for name, temperature in [("clinical", temperatures["clinical"]),
                              ("not skin", trust.settings.temperature)]:
        assert torch.allclose(trust.calibrated(row, [name]), (row / temperature).softmax(-1))
    assert torch.allclose(trust.calibrated(row), (row / trust.settings.temperature).softmax(-1))
    trust.save(tmp_path)
    assert TrustModel.load(tmp_path).settings.modality_temperature == temperatures


def test_ece_by_hand():
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right): bins (0.867, 0.933] and (0.533, 0.6]
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6]])
    targets = torch.tensor([0, 1, 1])
    expected = 2 / 3 * abs(0.5 - 0.9) + 1 / 3 * abs(1.0 - 0.6)
    assert expected_calibration_error(probs, targets) == pytest.approx(expected)


def _trust_on_clusters():
    """Reference and validation features around two directions; pixels around one point."""
    generator = torch.Generator().manual_seed(1)
    centres = torch.nn.functional.normalize(torch.randn(2, 16, generator=generator), dim=1)

    def features(n):
        x = centres[torch.arange(n) % 2] + 0.05 * torch.randn(n, 16, generator=generator)
        return torch.nn.functional.normalize(x, dim=1)

    def pixels(n):
        return 0.5 + 0.01 * torch.randn(n, 8, generator=generator)
    logits = torch.randn(40, 3, generator=generator)
    trust = fit_trust((features(200), pixels(200)), (features(80), pixels(80)), logits,
                      logits.argmax(1), {"sets": "clusters"})
    return trust, features, pixels


def test_ood_score_separates_and_round_trips(tmp_path):
    trust, features, pixels = _trust_on_clusters()
    inside = trust.score(features(100), pixels(100))
    far_features = torch.nn.functional.normalize(torch.randn(50, 16), dim=1)
    outside = trust.score(far_features, pixels(50))
    assert (inside > trust.settings.threshold).float().mean() <= 0.1
    assert (outside > trust.settings.threshold).all()
    blank_pixels = torch.zeros(5, 8)                    # features fine, pixels far: still out
    assert (trust.score(features(5), blank_pixels) > trust.settings.threshold).all()
    trust.save(tmp_path)
    loaded = TrustModel.load(tmp_path)
    assert loaded.settings == trust.settings
    probe = features(10), pixels(10)
    assert torch.equal(loaded.score(*probe), trust.score(*probe))
    assert TrustModel.load(tmp_path / "nothing") is None


def test_each_modality_is_judged_against_its_own_reference(tmp_path):
    """Dermoscopy around one direction, clinical photos around another: a clinical photo is in
    distribution when judged clinical (compared with clinical references only) and out when
    judged dermoscopic; the per-modality settings survive a save and load."""
    generator = torch.Generator().manual_seed(2)
    centres = torch.nn.functional.normalize(torch.randn(2, 16, generator=generator), dim=1)

    def features(n, which):
        x = centres[which] + 0.05 * torch.randn(n, 16, generator=generator)
        return torch.nn.functional.normalize(x, dim=1)

    def pixels(n):
        return 0.5 + 0.01 * torch.randn(n, 8, generator=generator)
    reference = torch.cat([features(150, 0), features(50, 1)]), pixels(200)
    reference_modality = torch.tensor([1] * 150 + [0] * 50)     # MODALITIES: clinical, derm.
    validation = torch.cat([features(60, 0), features(30, 1)]), pixels(90)
    modalities = ["dermoscopic"] * 60 + ["clinical"] * 30
    logits = torch.randn(90, 3, generator=generator)
    trust = fit_trust(reference, validation, logits, logits.argmax(1), {}, reference_modality,
                      modalities)
    assert set(trust.settings.modalities) == {"clinical", "dermoscopic"}
    assert trust.settings.modalities["clinical"]["reference"] == 50
    photo, stats = features(20, 1), pixels(20)
    as_clinical = trust.verdict(photo, stats, ["clinical"] * 20)
    as_dermoscopy = trust.verdict(photo, stats, ["dermoscopic"] * 20)
    assert sum(v["abstained"] for v in as_clinical) <= 2
    assert all(v["abstained"] for v in as_dermoscopy)
    trust.save(tmp_path)
    loaded = TrustModel.load(tmp_path)
    assert loaded.settings == trust.settings
    assert loaded.verdict(photo, stats, ["clinical"] * 20) == as_clinical
    # too few validation photos of a modality: it shares the overall reference and threshold
    few = fit_trust(reference, validation, logits, logits.argmax(1), {}, reference_modality,
                    ["dermoscopic"] * 75 + ["clinical"] * 15)
    assert set(few.settings.modalities) == {"dermoscopic"}
    assert few.verdict(photo, stats, ["clinical"] * 20) == few.verdict(photo, stats)


def test_answerable_conditions_and_the_out_of_scope_verdict():
    from dermvlm.trust import OUT_OF_SCOPE_MESSAGE, abstain_message, fit_answerable
    truth = ["nevus"] * 4 + ["melanoma"] * 4 + ["psoriasis"] * 2
    said = ["nevus"] * 4 + ["nevus", "nevus", "nevus", "melanoma"] + ["psoriasis"] * 2
    rows, answerable = fit_answerable(said, truth, min_images=3, min_f1=0.5)
    by = {r["condition"]: r for r in rows}
    assert by["nevus"]["precision"] == pytest.approx(4 / 7, abs=1e-3) and by["nevus"]["recall"] == 1.0
    assert by["melanoma"]["f1"] == pytest.approx(0.4)        # p 1, r 1/4
    assert answerable == ["nevus"]                           # psoriasis: only 2 images
    trust, _, _ = _trust_on_clusters()
    trust.settings.clinical_answerable = answerable
    fine = {"ood_score": 0.5, "threshold": 1.0, "abstained": False}
    assert trust.in_scope(fine, "clinical", "nevus") == fine
    assert trust.in_scope(fine, "dermoscopic", "melanoma") == fine
    out = trust.in_scope(fine, "clinical", "melanoma")
    assert out["abstained"] and abstain_message(out) == OUT_OF_SCOPE_MESSAGE
    report = abstained_report(out, abstain_message(out))
    assert OUT_OF_SCOPE_MESSAGE in render_report_text(report)
    assert abstain_message({**fine, "abstained": True}) == ABSTAIN_MESSAGE


def test_clinical_minimum_confidence_names_only_what_val_got_right_often_enough(tmp_path):
    from dermvlm.trust import LOW_CONFIDENCE_MESSAGE, fit_min_confidence
    # ranked: 0.9 R, 0.8 R, 0.7 W, 0.6 R, 0.5 W: precision 1, 1, 2/3, 3/4, 3/5
    confidence, right = [0.6, 0.9, 0.5, 0.8, 0.7], [True, True, False, True, False]
    assert fit_min_confidence(confidence, right, 0.9) == 0.8
    assert fit_min_confidence(confidence, right, 0.75) == 0.6
    assert fit_min_confidence(confidence, right, 0.0) == 0.5
    assert fit_min_confidence([0.7, 0.6], [False, True], 0.9) is None
    # tied confidences stand or fall together: a threshold cannot split them
    assert fit_min_confidence([0.8, 0.8, 0.5], [True, False, True], 0.7) is None
    trust, _, _ = _trust_on_clusters()
    trust.settings.clinical_answerable = ["nevus"]
    trust.settings.clinical_min_confidence = 0.6
    trust.settings.fitted_on["clinical_min_confidence"] = {"precision": 0.9}
    fine = {"ood_score": 0.5, "threshold": 1.0, "abstained": False}
    assert trust.in_scope(fine, "clinical", "nevus", 0.6) == fine
    low = trust.in_scope(fine, "clinical", "nevus", 0.59)
    assert low["abstained"] and low["reason"] == "low confidence"
    assert low["message"] == LOW_CONFIDENCE_MESSAGE.format(share="90%")
    assert trust.in_scope(fine, "dermoscopic", "nevus", 0.1) == fine      # clinical only
    assert trust.in_scope(fine, "clinical", "melanoma", 0.99)["reason"] == "out of scope"
    # judged dermoscopic, but less surely than real dermoscopy nearly always is: clinical rules
    trust.settings.dermoscopic_min_modality_confidence = 0.95
    assert trust.in_scope(fine, "dermoscopic", "melanoma", 0.99, 0.96) == fine
    assert trust.in_scope(fine, "dermoscopic", "melanoma", 0.99, 0.9)["reason"] == "out of scope"
    assert trust.in_scope(fine, "dermoscopic", "nevus", 0.5, 0.9)["reason"] == "low confidence"
    # a photo withheld for low confidence keeps its concern; an out-of-scope one does not
    from dermvlm.trust import REVIEW_NOTE
    trust.settings.malignancy_threshold = 0.2
    assert trust.with_concern(low, 0.2)["message"] == low["message"] + REVIEW_NOTE
    assert trust.with_concern(low, 0.19) == low
    # out of scope: the note goes by whether the withheld top diagnosis is a risky one
    from dermvlm.trust import RESEMBLES_RISKY_NOTE
    scope = trust.in_scope(fine, "clinical", "melanoma", 0.99)
    assert trust.with_concern(scope, 0.9) == scope and trust.with_concern(fine, 0.9, True) == fine
    assert trust.with_concern(scope, 0.0, True)["message"] == scope["message"] + \
        RESEMBLES_RISKY_NOTE
    assert trust.with_concern({**fine, "abstained": True}, 0.9, True) == {**fine,
                                                                         "abstained": True}
    loaded = TrustModel.load(trust.save(tmp_path))
    assert loaded.in_scope(fine, "clinical", "nevus", 0.59) == low
    assert loaded.strict("dermoscopic", 0.9) and not loaded.strict("dermoscopic", 0.95)


def test_image_statistics_tell_a_blank_page_from_skin(synth_dir):
    skin = [image_statistics(Image.open(p)) for p in sorted((synth_dir / "images").iterdir())]
    blank = image_statistics(Image.new("RGB", (80, 80), (250, 250, 250)))
    spread = max(torch.dist(skin[0], s) for s in skin[1:])
    assert torch.dist(skin[0], blank) > spread


def test_abstained_report_is_valid_and_plain():
    report = abstained_report({"ood_score": 2.5, "threshold": 1.1, "abstained": True},
                              ABSTAIN_MESSAGE)
    again = LesionReport.model_validate_json(report.model_dump_json())
    assert again == report and report.differential == [] and report.colours is None
    assert ABSTAIN_MESSAGE in render_report_text(report)
    with pytest.raises(ValueError, match="abstained report gives no findings"):
        LesionReport.model_validate({**report.model_dump(), "colours": ["red"]})
    with pytest.raises(ValueError, match="missing"):
        LesionReport.model_validate({**report.model_dump(), "out_of_distribution": None})


def test_fit_trust_then_classify_abstains_on_non_skin(synth_dir, tmp_path, capsys):
    """train.fit_trust writes the trust file beside a model folder; `dermvlm classify` then
    refuses a noise image and a flat grey square (out of distribution or not skin), and still
    answers the SynthDerm images."""
    from dermvlm.skincheck import NOT_SKIN_MESSAGE
    from dermvlm.cli import main as dermvlm_main
    from dermvlm.labelled import held_out
    from train import fit_trust
    folder = vanilla_open_clip_folder(tmp_path / "clip")
    assert fit_trust.main(["--model", str(folder), "--split", str(synth_dir), "--calibrate",
                           str(synth_dir), "--holdout", "0.5", "--calibrate-modality",
                           str(synth_dir), "--quiet"]) == 0
    assert (folder / "trust.json").is_file()
    # every labelled image is counted under the modality it was judged; >= 30: its own T
    settings = TrustModel.load(folder).settings
    counts = settings.fitted_on["modality_temperature"]["images"]
    assert sum(counts.values()) == 40
    assert set(settings.modality_temperature or {}) == {m for m, n in counts.items() if n >= 30}
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(photos / "noise.png")
    Image.new("RGB", (96, 96), (128, 128, 128)).save(photos / "grey.png")
    # images of the reference half: at distance ~0 from themselves, so always answered
    good = [p for p in sorted((synth_dir / "images").iterdir()) if not held_out(p, 0.5)][:3]
    out = tmp_path / "preds.csv"
    code = dermvlm_main(["classify", str(photos), *map(str, good), "--model", str(folder),
                         "--labels", "melanoma,psoriasis", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0 and printed.count(ABSTAIN_MESSAGE) + printed.count(NOT_SKIN_MESSAGE) >= 2
    rows = list(csv.DictReader(open(out)))
    abstained = {r["image"] for r in rows if r["abstained"] == "True"}
    assert {str(photos / "noise.png"), str(photos / "grey.png")} <= abstained
    assert not abstained & {str(p) for p in good}
    assert all(any(r["label"] for r in rows if r["image"] == str(p)) for p in good)


def test_non_skin_set_and_ood_evaluation(synth_dir, tmp_path):
    """eval.ood writes its non-skin set, then reports AUROC, refusals and ECE for a model
    folder with a trust file; the default's own figures are in the model card."""
    import json

    from dermvlm.imaging import open_image
    from eval import ood
    from train import fit_trust
    nonskin = ood.make_nonskin(tmp_path / "nonskin")
    assert len(nonskin) == 160 and all(open_image(p).size for p in nonskin[::20])
    second = ood.make_package_nonskin(tmp_path / "nonskin2")    # other sources, whole + crops
    assert len(second) >= 30 and len(second) % 3 == 0 and not any("hopper" in p for p in second)
    assert {Path(p).name for p in nonskin}.isdisjoint(Path(p).name for p in second)
    folder = vanilla_open_clip_folder(tmp_path / "clip")
    assert fit_trust.main(["--model", str(folder), "--split", str(synth_dir), "--calibrate",
                           str(synth_dir), "--holdout", "0.5", "--quiet"]) == 0
    assert ood.main(["--model", str(folder), "--id", str(synth_dir), "--ood",
                     str(tmp_path / "nonskin"), "--out", str(tmp_path / "ood.json")]) == 0
    result = json.loads((tmp_path / "ood.json").read_text())
    assert 0 <= result["auroc"] <= 1 and result["ood"]["n"] == 160
    scores = result["in_distribution"][str(synth_dir)]
    assert scores["n"] == 40 and scores["label_space"] == "ontology"
    assert ood.main(["--model", str(tmp_path), "--id", "x", "--ood", "y"]) == 2


def test_concept_scaling_recovers_the_scaling_labels_were_drawn_at():
    """Platt scaling of MONET scores: labels drawn at T = 0.03, bias 0.05 are fitted back;
    T = 0.01 with no bias is MONET's own score (the softmax of the target/reference pair)."""
    from dermvlm.trust import fit_concept_scaling
    generator = torch.Generator().manual_seed(0)
    margins = 0.08 * torch.randn(3000, 4, 3, generator=generator)
    probs = torch.sigmoid((margins - 0.05) / 0.03).mean(-1)
    labels = torch.bernoulli(probs, generator=generator)
    t, b = fit_concept_scaling(margins, labels)
    assert t == pytest.approx(0.03, rel=0.15) and b == pytest.approx(0.05, abs=0.01)
    pair = torch.stack([margins, torch.zeros_like(margins)], -1) / 0.01
    assert torch.allclose(pair.softmax(-1)[..., 0].mean(-1),
                          torch.sigmoid(margins / 0.01).mean(-1), atol=1e-6)


def test_scope_evaluation_counts_every_image_once(synth_dir, tmp_path, monkeypatch):
    """eval.scope: every image is answered or refused for exactly one reason, and
    falls in exactly one of the truth-in-scope and truth-out-of-scope groups; Wilson
    intervals by hand."""
    import json

    from dermvlm.trust import TrustModel
    from eval import scope
    from train import fit_trust
    assert scope.wilson_interval(0, 10) == [0.0, 0.2775]
    assert scope.wilson_interval(5, 10) == [0.2366, 0.7634]
    from dermvlm.labelled import labelled_records
    from dermvlm.ontology import CONDITIONS
    folder = vanilla_open_clip_folder(tmp_path / "clip")
    # separate --reference and --validation sets (a validation set has no reference images)
    assert fit_trust.main(["--model", str(folder), "--reference", str(synth_dir),
                           "--validation", str(synth_dir), "--answerable", str(synth_dir),
                           "--quiet"]) == 0
    trust = TrustModel.load(folder)
    fitted = trust.settings.fitted_on["clinical_answerable"]
    clinical = [r for r in labelled_records(synth_dir) if r.modality == "clinical"]
    assert fitted["images"] == len(clinical) > 0
    assert sum(row["images"] for row in fitted["conditions"]) == len(clinical)
    assert set(trust.settings.clinical_answerable) <= {c.name for c in CONDITIONS}
    # the minimum confidence: the photos named at or above it are right 90 % of the time
    minimum = trust.settings.fitted_on["clinical_min_confidence"]
    assert minimum["precision"] == 0.9 and minimum["named"] <= len(clinical)
    if trust.settings.clinical_min_confidence is None:
        assert trust.settings.clinical_answerable == [] and minimum["named_above"] == 0
    else:
        assert minimum["right_above"] >= 0.9 * minimum["named_above"] > 0
    # the dermoscopic floor: the 1st percentile of the modality confidence of the answerable
    # sets' dermoscopic images judged dermoscopic, with enough of them (here too few)
    floor = trust.settings.fitted_on["dermoscopic_min_modality_confidence"]
    dermoscopic = len(labelled_records(synth_dir)) - len(clinical)
    assert floor["images"] <= dermoscopic < fit_trust.MIN_DERMOSCOPIC_FLOOR_IMAGES
    assert trust.settings.dermoscopic_min_modality_confidence is None
    monkeypatch.setattr(fit_trust, "MIN_DERMOSCOPIC_FLOOR_IMAGES", 1)
    from dermvlm.clip.model import load_model
    from dermvlm.imaging import eval_transform
    from dermvlm.zeroshot import ZeroShot, zeroshot_modality
    model, cfg, tokenizer = load_model(str(folder))
    zs, transform = ZeroShot(model, tokenizer), eval_transform(cfg["vision_cfg"]["image_size"])
    paths = [r.image for r in labelled_records(synth_dir) if r.modality == "dermoscopic"]
    fit_trust.fit_dermoscopic_floor(trust, zs, transform, [str(synth_dir)], paths,
                                    progress=False)
    features, _ = fit_trust.encode_cached(zs, transform, paths, progress=False)
    judged, sure = zeroshot_modality(zs, features)
    sure = [c for m, c in zip(judged, sure) if m == "dermoscopic"]
    if sure:
        assert trust.settings.dermoscopic_min_modality_confidence == \
            pytest.approx(np.quantile(sure, 0.01))
    trust.settings.clinical_answerable = []
    trust.save(folder)
    out = tmp_path / "scope.json"
    assert scope.main(["--model", str(folder), "--set", str(synth_dir), "--out", str(out),
                       "--quiet"]) == 0
    result = json.loads(out.read_text())["sets"][str(synth_dir)]
    every = result["all"]
    outcomes = ("answered", "refused_ood", "not_skin", "out_of_scope", "low_confidence")
    assert every["n"] == 40 and sum(every[k]["count"] for k in outcomes) == 40
    assert result["truth_in_scope"]["n"] + result["truth_out_of_scope"]["n"] == 40
    # dermvlm classify: a clinical photo below the minimum confidence is not named, and keeps
    # its concern when its P(malignant or premalignant) reaches the operating point
    from dermvlm.clip.classify import classify
    from dermvlm.trust import REVIEW_NOTE
    trust.settings.clinical_answerable = [c.name for c in CONDITIONS]
    trust.settings.clinical_min_confidence, trust.settings.malignancy_threshold = 1.01, 0.0
    # every image under the clinical rules, however the random tower judges its modality
    trust.settings.dermoscopic_min_modality_confidence = 1.01
    trust.save(folder)
    ranked = classify([r.image for r in clinical], str(folder), [c.name for c in CONDITIONS])
    low = [v for _, top, v in ranked if v.get("reason") == "low confidence"]
    assert low and all(v["message"].endswith(REVIEW_NOTE) for v in low)
    assert all(top == [] for _, top, v in ranked if v["abstained"])
    # the rules are the photo's, whatever labels are ranked (here one outside the ontology)
    mine = classify([r.image for r in clinical], str(folder), ["keloid", "psoriasis"])
    assert [v for _, _, v in mine] == [v for _, _, v in ranked]
    assert scope.main(["--model", str(tmp_path), "--set", str(synth_dir)]) == 2
    # a bad --answer-precision is refused before any image is encoded
    assert fit_trust.main(["--model", str(folder), "--reference", str(synth_dir),
                           "--validation", str(synth_dir), "--answer-precision", "1.5"]) == 2


def test_the_ood_score_is_shown_only_where_it_is_the_reason():
    from dermvlm.report import abstained_report, render_report_text
    from dermvlm.trust import OUT_OF_SCOPE_MESSAGE, ood_note
    far = {"ood_score": 1.4, "threshold": 1.1, "abstained": True}
    scope = {"ood_score": 0.8, "threshold": 1.1, "abstained": True,
             "message": OUT_OF_SCOPE_MESSAGE}
    assert "score 1.40, threshold 1.10" in ood_note(far) and ood_note(scope) == ""
    text = render_report_text(abstained_report(scope, OUT_OF_SCOPE_MESSAGE))
    assert text.startswith(OUT_OF_SCOPE_MESSAGE) and "out-of-distribution" not in text
    assert "score 1.40" in render_report_text(abstained_report(far, "Withheld."))


def test_skin_check_flags_what_is_off_the_skin_subspace_and_round_trips(tmp_path):
    """Skin features in a 4-dimensional subspace: held-out skin passes (the threshold is the
    largest modality's 99th percentile, so the wider modality is not flagged), directions
    outside it are "not skin" with a confidence near 1, and a trust file keeps the check."""
    from dermvlm.skincheck import SkinCheck
    generator = torch.Generator().manual_seed(3)
    axes = torch.linalg.qr(torch.randn(64, 4, generator=generator))[0]      # (64, 4)

    def skin(n, noise):
        x = torch.randn(n, 4, generator=generator) @ axes.T
        return torch.nn.functional.normalize(x + noise * torch.randn(n, 64, generator=generator),
                                             dim=1)
    reference = skin(300, 0.02)
    validation = torch.cat([skin(100, 0.02), skin(100, 0.05)])   # dermoscopy, phone photos
    modality = ["dermoscopic"] * 100 + ["clinical"] * 100
    check = SkinCheck.fit(reference, validation, modality, components=4)
    assert check.threshold == pytest.approx(float(check.scores(validation[100:]).quantile(0.99)))
    assert sum(flag for flag, _ in check.judge(skin(200, 0.05))) <= 10
    off = torch.nn.functional.normalize(torch.randn(50, 64, generator=generator), dim=1)
    judged = check.judge(off)
    assert all(flag and confidence == 1.0 for flag, confidence in judged)
    trust, features, pixels = _trust_on_clusters()
    trust.skin = check
    trust.settings.skin_check = {"tower": check.tower, "components": 4,
                                 "threshold": check.threshold}
    trust.save(tmp_path)
    loaded = TrustModel.load(tmp_path)
    assert torch.equal(loaded.skin.scores(off), check.scores(off))
    assert loaded.skin.judge(validation) == check.judge(validation)


def test_imagenet_features_tell_a_document_from_skin(synth_dir):
    """The wheel's untouched ImageNet tower (dermvlm.skincheck): a page of text lies further
    from the subspace of SynthDerm renders than every held-out render does."""
    from PIL import ImageDraw

    from dermvlm.skincheck import SkinCheck, imagenet_features
    renders = [Image.open(p).convert("RGB") for p in sorted((synth_dir / "images").iterdir())]
    features = imagenet_features(renders)
    assert features.shape == (len(renders), 1280)
    assert torch.allclose(features.norm(dim=1), torch.ones(len(renders)), atol=1e-5)
    page = Image.new("RGB", (224, 224), (250, 250, 245))
    draw = ImageDraw.Draw(page)
    for line in range(12):
        draw.text((8, 8 + 17 * line), "the quick brown fox jumps over", fill=(0, 0, 0))
    check = SkinCheck.fit(features[:30], features[30:], ["clinical"] * 10, components=8)
    assert float(check.scores(imagenet_features([page]))[0]) > \
        float(check.scores(features[30:]).max())


def test_modality_evaluation_judges_every_image_once(synth_dir, tmp_path):
    """eval.modality: each set's images under their records' modality, a --nonskin folder's
    as not skin; the confusion rows add up to the images, a flat grey page is judged not
    skin, and a model folder without the check never says "not skin"."""
    import json

    from eval import modality
    from train import fit_trust
    folder = vanilla_open_clip_folder(tmp_path / "clip")
    assert fit_trust.main(["--model", str(folder), "--split", str(synth_dir), "--calibrate",
                           str(synth_dir), "--holdout", "0.5", "--quiet"]) == 0
    pages = tmp_path / "pages"
    pages.mkdir()
    for shade in (120, 180, 240):
        Image.new("RGB", (120, 160), (shade, shade, shade)).save(pages / f"grey{shade}.png")
    out = tmp_path / "modality.json"
    assert modality.main(["--model", str(folder), "--set", str(synth_dir), "--nonskin",
                          str(pages), "--out", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())
    assert result["not_skin_check"] and result["all"]["n"] == 43
    rows = result["sets"][str(synth_dir)]["confusion"]
    assert sum(sum(row.values()) for row in rows.values()) == 40
    assert set(rows) <= {"clinical", "dermoscopic"}
    assert result["sets"][str(pages)]["confusion"]["not skin"].get("not skin", 0) == 3
    (folder / "trust.json").unlink()
    assert modality.main(["--model", str(folder), "--nonskin", str(pages), "--out", str(out),
                          "--quiet"]) == 0
    assert "not skin" not in json.loads(out.read_text())["all"]["confusion"]["not skin"]
    assert modality.main(["--model", str(folder)]) == 2


def test_fit_trust_encodes_each_held_out_image_once(synth_dir, tmp_path, monkeypatch):
    """The operating point, the per-modality temperature and the clinical scope read their
    sets through one cache: an image already encoded is not encoded again, and its features
    are what encoding it gives."""
    import dermvlm.trust
    from dermvlm.clip.model import load_model
    from dermvlm.imaging import eval_transform
    from dermvlm.trust import encode_images
    from dermvlm.zeroshot import ZeroShot
    from train.fit_trust import encode_cached
    folder = vanilla_open_clip_folder(tmp_path / "clip")
    model, cfg, tokenizer = load_model(str(folder))
    zs, transform = ZeroShot(model, tokenizer), eval_transform(cfg["vision_cfg"]["image_size"])
    paths = sorted(str(p) for p in (synth_dir / "images").iterdir())[:6]
    expected, _, _ = encode_images(zs, transform, paths)
    cache = {}
    first, kept = encode_cached(zs, transform, paths[:4] + [str(tmp_path / "gone.jpg")], cache,
                                progress=False)
    assert kept == paths[:4] and torch.allclose(first, expected[:4], atol=1e-5)
    encoded = []
    monkeypatch.setattr(dermvlm.trust, "encode_images",
                        lambda zs, tr, missing, **kw: encoded.append(list(missing)) or
                        encode_images(zs, tr, missing, **kw))
    again, kept = encode_cached(zs, transform, paths, cache, progress=False)
    assert encoded == [paths[4:]] and kept == paths
    assert torch.allclose(again, expected, atol=1e-5)
