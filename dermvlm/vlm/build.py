"""Assemble a DermVLM for training from its parts: a CLIP folder's image tower, a causal LM
(+ LoRA), a tokenizer with <image> added; and the untuned baseline of a saved folder."""
import torch

from dermvlm.errors import DermvlmError
from dermvlm.vlm.model import DermVLM, add_image_token, load_vlm_folder, vision_tower


def vision_from_clip(spec):
    """(vision tower, vision-only model_cfg) from a CLIP model folder or spec."""
    from open_clip.timm_model import TimmModel

    from dermvlm.clip.model import load_model
    model, model_cfg, _ = load_model(spec)
    if not hasattr(model.visual, "_embeds") and not isinstance(model.visual, TimmModel):
        raise DermvlmError(f"{spec}: the VLM needs an open_clip VisionTransformer or timm "
                           "(convolutional) image tower")
    return vision_tower(model.visual), {"embed_dim": model_cfg["embed_dim"],
                                        "vision_cfg": model_cfg["vision_cfg"]}


def apply_lora(lm, config):
    from peft import LoraConfig, get_peft_model
    targets = ("all-linear" if config.lora_targets == "all-linear"
               else [t.strip() for t in config.lora_targets.split(",") if t.strip()])
    lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha,
                      lora_dropout=config.lora_dropout, target_modules=targets,
                      task_type="CAUSAL_LM")
    if config.quantize_4bit:
        from peft import prepare_model_for_kbit_training
        lm = prepare_model_for_kbit_training(
            lm, use_gradient_checkpointing=config.gradient_checkpointing)
    return get_peft_model(lm, lora)


def build_vlm(config, device="cpu", lm=None, tokenizer=None, vision=None):
    """A fresh VLM for training: parts from config, or given directly (tests pass tiny ones)."""
    from dermvlm.vlm.lm import load_lm
    if config.quantize_4bit and not torch.cuda.is_available():
        print("warning: vlm.quantize_4bit on CPU: bitsandbytes 4-bit runs, but slowly")
    if vision is None:
        if not config.vision:
            raise DermvlmError("vlm.vision is empty: pass the CLIP model folder from "
                               "train.clip, e.g. --set vlm.vision=runs/clip/model")
        vision = vision_from_clip(config.vision)
    tower, vision_cfg = vision
    if lm is None:
        lm, tokenizer = load_lm(config.lm, quantize_4bit=config.quantize_4bit, device=device)
    add_image_token(lm, tokenizer)
    if config.gradient_checkpointing:
        lm.gradient_checkpointing_enable()
    for p in tower.parameters():
        p.requires_grad = False
    vlm = DermVLM(config, tower.eval(), lm, tokenizer, vision_cfg)
    vlm.projector.to(device)
    vlm.vision.to(device)
    return vlm


def untuned_baseline(folder, device="cpu", lm=None):
    """An untuned baseline for a VLM folder: its image tower, the base LM without the
    adapter, and a fresh untrained projector drawn with seed `vlm.seed` (the same draw each
    call; not bit-identical to the one stage 1 started from, whose draw followed the tower's
    and LM's construction). build-default's `untuned` scores are this baseline's."""
    from dermvlm.vlm.model import make_projector
    vlm = load_vlm_folder(folder, device=device, lm=lm)
    if hasattr(vlm.lm, "unload"):                     # merge_lora=False keeps a PeftModel
        vlm.lm = vlm.lm.unload()
    torch.manual_seed(vlm.config.seed)
    hidden = vlm.lm.get_input_embeddings().weight.shape[1]
    vlm.projector = make_projector(vlm.config.projector, vlm.vision.width, hidden).to(device)
    return vlm.eval()
