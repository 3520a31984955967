"""Fitted class prototypes (dermvlm.prototypes, train.fit_prototypes): the fit learns what the
text weights miss, each group only against its own labels; a model folder's prototypes reach
ZeroShot for DermLIP's prompts only, and survive a save and load."""
import json

import torch

from dermvlm.prototypes import fit_prototypes, load_prototypes, prototypes_info
from tiny_parts import vanilla_open_clip_folder


def _clusters(centres, n, generator):
    labels = torch.arange(n) % len(centres)
    x = centres[labels] + 0.3 * torch.randn(n, centres.shape[1], generator=generator)
    return torch.nn.functional.normalize(x, dim=1), labels


def test_fitted_prototypes_classify_what_the_text_weights_miss():
    generator = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(4, 32, generator=generator), dim=1)
    text = torch.nn.functional.normalize(centres + 1.2 * torch.randn(4, 32, generator=generator),
                                         dim=1)                   # text weights: off target
    train_x, train_y = _clusters(centres, 400, generator)
    test_x, test_y = _clusters(centres, 400, generator)
    # two groups with their own label spaces: {0, 1, 2} and {1, 2, 3}
    first, second = train_y <= 2, train_y >= 1
    groups = [(train_x[first], train_y[first], [0, 1, 2]),
              (train_x[second], train_y[second], [1, 2, 3])]
    fitted = fit_prototypes(text, groups, steps=200, lr=1e-2)

    def accuracy(weights):
        return float(((test_x @ weights.T).argmax(1) == test_y).float().mean())
    assert accuracy(fitted) > accuracy(text) + 0.2
    assert torch.allclose(fitted.norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.equal(fit_prototypes(text, groups, steps=0), text)


def test_fit_prototypes_writes_a_file_zeroshot_uses_for_dermlip_prompts(synth_dir, tmp_path,
                                                                         capsys):
    from dermvlm.clip.model import load_model
    from dermvlm.zeroshot import ATTRIBUTE_TEMPLATES, ZeroShot
    from train import fit_prototypes as cli
    folder = vanilla_open_clip_folder(tmp_path / "clip")
    assert cli.main(["--model", str(folder), "--train", str(synth_dir), "--val", str(synth_dir),
                     "--steps", "100", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    scores = summary["val_balanced_accuracy"]
    assert summary["written"] and summary["steps"] == 100 and summary["space"] == "union"
    assert scores["100"]["SynthDerm"] > scores["0"]["SynthDerm"]   # fitted on these images
    prototypes = load_prototypes(folder)
    labels = sorted(prototypes)
    assert labels == summary["label_spaces"]["SynthDerm"]
    assert prototypes_info(folder)["steps"] == 100
    model, _, tokenizer = load_model(str(folder))
    fitted, plain = ZeroShot(model, tokenizer), ZeroShot(model, tokenizer, prototypes=False)
    weights = fitted.classifier(labels + ["unheard-of condition"])
    assert torch.equal(weights[:, 0], prototypes[labels[0]])
    # (allclose: prompts encoded in another batch differ in the last bits)
    assert torch.allclose(weights[:, -1], plain.classifier(["unheard-of condition"])[:, 0],
                          atol=1e-6)
    assert not torch.allclose(weights[:, 0], plain.classifier(labels[:1])[:, 0], atol=1e-3)
    assert torch.allclose(fitted.classifier(labels[:2], ATTRIBUTE_TEMPLATES),
                          plain.classifier(labels[:2], ATTRIBUTE_TEMPLATES), atol=1e-6)
    assert cli.main(["--model", str(folder), "--train", str(synth_dir), "--val",
                     str(synth_dir), "--steps", "x"]) == 2


def test_prototypes_of_one_modality_score_only_images_judged_that_modality(synth_dir,
                                                                          tmp_path, capsys):
    from dermvlm.clip.model import load_model
    from dermvlm.labelled import labelled_records
    from dermvlm.zeroshot import (MODALITY_TEMPLATES, MODALITY_WORDS, ZeroShot,
                                  zeroshot_modality)
    from train import fit_prototypes as cli
    folder = vanilla_open_clip_folder(tmp_path / "clip")
    assert cli.main(["--model", str(folder), "--train", str(synth_dir), "--val", str(synth_dir),
                     "--steps", "100", "--modality", "dermoscopic", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    dermoscopic = sum(r.modality == "dermoscopic" for r in labelled_records(str(synth_dir)))
    assert summary["modality"] == "dermoscopic" and prototypes_info(folder)["modality"] == \
        "dermoscopic"
    assert summary["train_images"]["SynthDerm"] == dermoscopic < 40
    model, _, tokenizer = load_model(str(folder))
    fitted, plain = ZeroShot(model, tokenizer), ZeroShot(model, tokenizer, prototypes=False)
    # "images" that are the modality prompts themselves: each is judged its own modality
    words = [MODALITY_WORDS[m] for m in ("dermoscopic", "clinical")]
    images = plain.classifier(words, MODALITY_TEMPLATES).T                # (2, D)
    assert zeroshot_modality(plain, images)[0] == ["dermoscopic", "clinical"]
    labels = sorted(load_prototypes(folder))
    with_prototypes = 100 * images @ fitted.classifier(labels)
    text_only = plain.logits(images, labels)
    logits = fitted.logits(images, labels)
    assert torch.allclose(logits[0], with_prototypes[0], atol=1e-4)
    assert torch.allclose(logits[1], text_only[1], atol=1e-4)
    assert not torch.allclose(logits[0], text_only[0], atol=1e-3)


def test_union_space_separates_labels_that_never_share_a_set():
    """Two sets with disjoint labels ({0, 1} and {2, 3}) whose classes 0 and 2 look alike: fitted
    within each set's own labels nothing pulls 0 and 2 apart, fitted against all four labels
    (the app ranks them all) the four-way ranking is better."""
    generator = torch.Generator().manual_seed(1)
    base = torch.nn.functional.normalize(torch.randn(3, 32, generator=generator), dim=1)
    centres = torch.nn.functional.normalize(torch.stack(
        [base[0], base[1], base[0] + 0.6 * base[2], base[2]]), dim=1)
    text = torch.nn.functional.normalize(torch.randn(4, 32, generator=generator), dim=1)
    x, y = _clusters(centres, 800, generator)
    first, second = y <= 1, y >= 2
    own = [(x[first], y[first], [0, 1]), (x[second], y[second], [2, 3])]
    union = [(x[first], y[first], [0, 1, 2, 3]), (x[second], y[second], [0, 1, 2, 3])]
    test_x, test_y = _clusters(centres, 400, generator)

    def four_way(weights):
        return float(((test_x @ weights.T).argmax(1) == test_y).float().mean())
    assert four_way(fit_prototypes(text, union, 200, lr=1e-2)) > \
        four_way(fit_prototypes(text, own, 200, lr=1e-2)) + 0.1
