"""merge-export: a DermVLM -> a standard transformers LLaVA checkpoint.

The result loads with `AutoModelForImageTextToText.from_pretrained(out)` and no dermvlm code
(so vLLM or TGI can serve it): the open_clip ViT becomes a CLIPVisionModel, the projector the
LLaVA projector, the LoRA adapter is merged into the LM. Possible when the tower is an open_clip
ViT (no attention pooling), the projector is mlp2x_gelu and image tokens are not pooled —
DermVLM's features are exactly LLaVA's vision_feature_layer=-1 with the "full" selection
(class token first; vlm.class_token) or the "default" one (patch tokens alone).
"""
from pathlib import Path

import torch

from dermvlm.errors import DermvlmError
from dermvlm.vlm.model import IMAGE_TOKEN


def clip_vision_config(visual, vision_cfg):
    from transformers import CLIPVisionConfig
    width = visual.transformer.width
    block = visual.transformer.resblocks[0]
    return CLIPVisionConfig(
        hidden_size=width, intermediate_size=block.mlp.c_fc.out_features,
        num_hidden_layers=len(visual.transformer.resblocks),
        num_attention_heads=block.attn.num_heads, image_size=visual.image_size[0],
        patch_size=visual.patch_size[0], layer_norm_eps=block.ln_1.eps,
        hidden_act="quick_gelu" if vision_cfg.get("quick_gelu") else "gelu",
        projection_dim=visual.output_dim)


def clip_vision_state(visual):
    """open_clip VisionTransformer state -> HF CLIPVisionModel state (vision_model.*)."""
    out = {"vision_model.embeddings.patch_embedding.weight": visual.conv1.weight,
           "vision_model.embeddings.class_embedding": visual.class_embedding,
           "vision_model.embeddings.position_embedding.weight": visual.positional_embedding,
           "vision_model.pre_layrnorm.weight": visual.ln_pre.weight,
           "vision_model.pre_layrnorm.bias": visual.ln_pre.bias,
           "vision_model.post_layernorm.weight": visual.ln_post.weight,
           "vision_model.post_layernorm.bias": visual.ln_post.bias}
    for i, block in enumerate(visual.transformer.resblocks):
        pre = f"vision_model.encoder.layers.{i}."
        q, k, v = block.attn.in_proj_weight.chunk(3)
        qb, kb, vb = block.attn.in_proj_bias.chunk(3)
        out.update({
            pre + "self_attn.q_proj.weight": q, pre + "self_attn.q_proj.bias": qb,
            pre + "self_attn.k_proj.weight": k, pre + "self_attn.k_proj.bias": kb,
            pre + "self_attn.v_proj.weight": v, pre + "self_attn.v_proj.bias": vb,
            pre + "self_attn.out_proj.weight": block.attn.out_proj.weight,
            pre + "self_attn.out_proj.bias": block.attn.out_proj.bias,
            pre + "layer_norm1.weight": block.ln_1.weight,
            pre + "layer_norm1.bias": block.ln_1.bias,
            pre + "layer_norm2.weight": block.ln_2.weight,
            pre + "layer_norm2.bias": block.ln_2.bias,
            pre + "mlp.fc1.weight": block.mlp.c_fc.weight,
            pre + "mlp.fc1.bias": block.mlp.c_fc.bias,
            pre + "mlp.fc2.weight": block.mlp.c_proj.weight,
            pre + "mlp.fc2.bias": block.mlp.c_proj.bias,
        })
    return {k: v.detach().clone() for k, v in out.items()}


def _check_exportable(vlm):
    visual = vlm.vision.visual
    if vlm.config.token_pool != 1:
        raise DermvlmError("merge-export needs vlm.token_pool=1 (LLaVA has no token pooling)")
    if vlm.config.projector != "mlp2x_gelu":
        raise DermvlmError("merge-export needs the mlp2x_gelu projector (LLaVA's)")
    if hasattr(visual, "trunk"):
        raise DermvlmError("merge-export needs a ViT image tower: transformers' LLaVA reads "
                           "a sequence of hidden states from its vision model, and a "
                           "convolutional (timm EfficientNet) tower has none; serve this "
                           "VLM with dermvlm (chat, describe, app) instead")
    if getattr(visual, "attn_pool", None) is not None or not hasattr(visual, "conv1"):
        raise DermvlmError("merge-export needs a plain open_clip ViT image tower")


def merged_lm(vlm):
    lm = vlm.lm
    if hasattr(lm, "merge_and_unload"):
        import copy
        lm = copy.deepcopy(lm).merge_and_unload()
    return lm


def export_llava(vlm, out_dir):
    """Write a transformers LLaVA checkpoint (+ tokenizer and processor) to out_dir."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration
    _check_exportable(vlm)
    visual = vlm.vision.visual
    lm = merged_lm(vlm)
    select = feature_selection(vlm)
    config = LlavaConfig(
        vision_config=clip_vision_config(visual, vlm.vision_cfg["vision_cfg"]).to_dict(),
        text_config=lm.config.to_dict(), image_token_index=vlm.image_token_id,
        image_seq_length=vlm.num_image_tokens, projector_hidden_act="gelu",
        vision_feature_select_strategy=select, vision_feature_layer=-1,
        multimodal_projector_bias=True, tie_word_embeddings=lm.config.tie_word_embeddings)
    llava = LlavaForConditionalGeneration(config).eval()
    inner = llava.model
    state = clip_vision_state(visual)
    if not any(k.startswith("vision_model.") for k in inner.vision_tower.state_dict()):
        state = {k[len("vision_model."):]: v for k, v in state.items()}  # transformers >= 5
    inner.vision_tower.load_state_dict(state, strict=True)
    proj = vlm.projector
    inner.multi_modal_projector.linear_1.load_state_dict(proj[0].state_dict())
    inner.multi_modal_projector.linear_2.load_state_dict(proj[2].state_dict())
    inner.language_model.load_state_dict(lm.model.state_dict())
    llava.lm_head.load_state_dict(lm.lm_head.state_dict())
    out_dir = Path(out_dir)
    llava.save_pretrained(out_dir)
    vlm.tokenizer.save_pretrained(out_dir)
    _save_processor(vlm, out_dir)
    template = out_dir / "chat_template.jinja"
    if template.is_file():
        template.write_text(multimodal_chat_template(template.read_text()))
    return out_dir


_CONTENTS = ("message['content']", 'message["content"]', "message.content")


def multimodal_chat_template(template):
    """The LM's chat template, also taking typed content ([{"type": "image"}, {"type": "text",
    "text": ...}], as processors and vLLM pass it), written as the VLM was trained: "<image>\n"
    then the text. String content renders as before."""
    flat = ("{%- macro dermvlm_flat(parts) -%}{%- for part in parts -%}"
            "{%- if part['type'] == 'image' -%}{{ '" + IMAGE_TOKEN + "\\n' }}"
            "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
            "{%- endfor -%}{%- endmacro -%}")
    out = template
    for content in _CONTENTS:
        out = out.replace(content, f"({content} if {content} is string else "
                                   f"dermvlm_flat({content}))")
    return template if out == template else flat + out


def feature_selection(vlm):
    """LLaVA's name for the image tokens the VLM passes: "full" keeps the class token."""
    return "full" if vlm.config.class_token else "default"


def _save_processor(vlm, out_dir):
    """A LlavaProcessor, so `AutoProcessor.from_pretrained(out)` prepares inputs too."""
    from transformers import CLIPImageProcessor, LlavaProcessor
    from dermvlm.imaging import MEAN, STD
    size = vlm.vision.image_size
    image_processor = CLIPImageProcessor(size={"shortest_edge": size},
                                         crop_size={"height": size, "width": size},
                                         image_mean=list(MEAN), image_std=list(STD))
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=vlm.tokenizer,
                               patch_size=vlm.vision.visual.patch_size[0],
                               vision_feature_select_strategy=feature_selection(vlm),
                               num_additional_image_tokens=1)
    processor.save_pretrained(out_dir)


@torch.no_grad()
def logits_match(vlm, llava, input_ids, pixel_values, atol=1e-4):
    """Max |logit difference| between the VLM and its export on the same inputs."""
    ours = vlm(input_ids=input_ids, pixel_values=pixel_values).logits
    theirs = llava(input_ids=input_ids, pixel_values=pixel_values).logits
    return float((ours - theirs).abs().max())
