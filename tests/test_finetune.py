"""The end-to-end alignment stage (dermvlm.clip.finetune, train.align_all): the tower rebuilt
from timm alone is open_clip's, augmentation keeps SynthDerm's colours and moves real photos',
and pack -> train -> finish round-trips exactly, with no test image in the pack."""
import json

import numpy as np
import pytest
import torch

from dermvlm.clip.finetune import (FullConfig, augment, build_visual, gaussian_blur,
                                   jpeg_round_trip, visual_forward)
from dermvlm.config import get_config


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from dermvlm.clip.model import build_model, save_model
    config = get_config("tiny", ["clip.model=efficientnet-lite0", "clip.image_size=64",
                                 "clip.text_proj=none", "clip.embed_dim=384"])
    model, model_cfg, _ = build_model(config.clip)
    folder = tmp_path_factory.mktemp("clip") / "model"
    save_model(model.eval(), model_cfg, folder)
    return model.eval(), model_cfg, folder


def test_tower_from_timm_alone_is_open_clips(tiny_clip):
    model, model_cfg, _ = tiny_clip
    vision = model_cfg["vision_cfg"]
    visual = build_visual({"timm_model_name": vision["timm_model_name"],
                           "timm_pool": vision["timm_pool"], "embed_dim": 384})
    visual.load_state_dict({k[len("visual."):]: v for k, v in model.state_dict().items()
                            if k.startswith("visual.")})
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(visual_forward(visual.eval(), x), model.encode_image(x), atol=1e-5)


def test_augment_keeps_synthderm_colours_and_jitters_real_photos():
    gen = torch.Generator().manual_seed(0)
    flat = torch.full((4, 32, 32, 3), 120, dtype=torch.uint8)
    out = augment(flat, torch.tensor([False, False, True, True]),
                  FullConfig(blur_p=1.0, jpeg_p=0.0), gen)
    assert out.shape == (4, 3, 32, 32)
    spread = (out - out[:, :, :1, :1]).abs().amax((1, 2, 3))
    assert spread.max() < 1e-5                       # flat stays flat under every geometry
    assert (out[0] - out[1]).abs().max() < 1e-5      # SynthDerm: colour untouched
    assert (out[2:, :, 0, 0] - out[0, :, 0, 0]).abs().max() > 1e-3     # real: jittered


def test_blur_and_jpeg_keep_a_flat_image_flat():
    flat = torch.full((2, 3, 16, 16), 0.4)
    assert torch.allclose(gaussian_blur(flat, torch.tensor([0.5, 1.5])), flat, atol=1e-6)
    assert (jpeg_round_trip(flat, 50) - flat).abs().max() < 2 / 255


def test_pack_train_finish_round_trip_without_test_images(tiny_clip, tmp_path):
    from safetensors.torch import load_file

    from dermvlm.clip.model import load_model
    from train.align_all import main
    _, _, folder = tiny_clip
    pack, run = tmp_path / "pack", tmp_path / "run"
    assert main(["pack", "--model", str(folder), "--out", str(pack), "--work",
                 str(tmp_path / "work"), "--per-set", "4", "--image-size", "64",
                 "--quiet"]) == 0
    meta = json.loads((pack / "meta.json").read_text())
    arrays = np.load(pack / "pack.npz")
    assert set(meta["images"]) == {"train_items", "train_images", "val"}   # no test split
    assert len(arrays["train_offsets"]) - 1 == meta["images"]["train_images"]
    assert abs(arrays["train_weight"].sum() - 1) < 1e-9
    assert main(["train", "--pack", str(pack), "--out", str(run), "--device", "cpu",
                 "--steps", "3", "--batch-size", "8", "--evals", "1",
                 "--trunk-lr", "1e-3", "--quiet"]) == 0
    weights = run / "lr0.001/visual.safetensors"
    history = json.loads((run / "lr0.001/history.json").read_text())
    assert history["steps"] == 3 and history["val"][0]["step"] == 3
    assert set(history["val"][0]) >= {"ham10000", "isic2017", "pad-ufes-20", "isic9"}
    assert main(["finish", "--model", str(folder), "--weights", str(weights),
                 "--out", str(tmp_path / "model")]) == 0
    trained = load_file(weights)
    start = load_file(pack / "visual_init.safetensors")
    for first_and_last in ("visual.trunk.conv_stem.weight", "visual.trunk.conv_head.weight"):
        assert not torch.equal(trained[first_and_last], start[first_and_last].float())
    finished = load_model(str(tmp_path / "model"))[0].state_dict()
    assert all(torch.equal(finished[k], v) for k, v in trained.items())


def test_build_default_takes_an_aligned_clip_once(tiny_clip, tmp_path):
    import shutil

    from dermvlm.errors import DermvlmError
    from train.build_default import use_clip
    _, _, folder = tiny_clip
    with pytest.raises(DermvlmError, match="no-such"):
        use_clip(tmp_path / "work", tmp_path / "no-such")
    said = use_clip(tmp_path / "work", folder)
    assert said["folder"] == str(folder) and len(said["weights_sha256"]) == 64
    assert use_clip(tmp_path / "work", folder) == said          # a resumed build: same copy
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    from safetensors.torch import load_file, save_file
    weights = load_file(other / "open_clip_model.safetensors")
    weights["logit_scale"] = weights["logit_scale"] + 1
    save_file(weights, other / "open_clip_model.safetensors")
    with pytest.raises(DermvlmError, match="another CLIP"):
        use_clip(tmp_path / "work", other)


def test_a_missing_pack_gets_one_line(tmp_path, capsys):
    from train.align_all import main
    assert main(["train", "--pack", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a training pack" in err and "nowhere" in err


def test_finish_names_missing_or_corrupt_weights_in_one_line(tiny_clip, tmp_path, capsys):
    from train.align_all import main
    _, _, folder = tiny_clip
    corrupt = tmp_path / "visual.safetensors"
    corrupt.write_bytes(b"not safetensors at all")
    for weights in (tmp_path / "missing.safetensors", corrupt):
        assert main(["finish", "--model", str(folder), "--weights", str(weights),
                     "--out", str(tmp_path / "model")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and weights.name in err
    assert not (tmp_path / "model").exists()
