"""Tiny, random, offline parts for VLM tests: a byte-level BPE tokenizer with a ChatML
template, a 2-layer Llama, and a 2-layer open_clip image tower."""
import json

import open_clip
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from dermvlm.vlm.model import VisionTower

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
          "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CORPUS = ["Describe the image.", "The lesion is red and scaly.", "A brown macule on the arm.",
          "What is the most likely diagnosis?", "This is psoriasis.", "Answer with a letter.",
          '{"elementary_lesions":["plaque"],"colours":["red"]}', "user assistant system"] * 20


def tiny_tokenizer():
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", bos_token="<|im_start|>")
    fast.chat_template = CHATML
    return fast


def tiny_lm(tokenizer, seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config).eval()


def tiny_vision(seed=0, image_size=32):
    torch.manual_seed(seed)
    cfg = {"image_size": image_size, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32}
    visual = open_clip.model._build_vision_tower(32, cfg)
    return VisionTower(visual), {"embed_dim": 32, "vision_cfg": cfg}


def vanilla_open_clip_folder(folder, width=64):
    """A model folder written with open_clip alone: a small CLIP with its own text tower and
    the default tokenizer, in the local-dir layout."""
    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 2, "width": width,
                                           "patch_size": 16, "head_width": 32},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2,
                        "layers": 2}}
    model = open_clip.CLIP(**cfg)
    folder.mkdir()
    save_file(model.state_dict(), folder / "open_clip_model.safetensors")
    (folder / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": cfg, "preprocess_cfg": {"mean": list(open_clip.OPENAI_DATASET_MEAN),
                                             "std": list(open_clip.OPENAI_DATASET_STD)}}))
    return folder


QWEN_VL_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}"
    "{{ m['content'] }}{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_qwen2_vl_folder(folder, seed=0):
    """A random 2-layer Qwen2-VL with its processor (image processor, video processor,
    tokenizer with the vision tokens, a chat template that places the image), saved as
    transformers saves it."""
    from transformers import (Qwen2VLConfig, Qwen2VLForConditionalGeneration,
                              Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor)
    tok = tiny_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": [
        "<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>"]})
    images = Qwen2VLImageProcessor(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16,
                                   patch_size=14, merge_size=2, temporal_patch_size=2)
    processor = Qwen2VLProcessor(image_processor=images, tokenizer=tok,
                                 video_processor=Qwen2VLVideoProcessor(),
                                 chat_template=QWEN_VL_TEMPLATE)
    token = tok.convert_tokens_to_ids
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=1024, eos_token_id=tok.eos_token_id,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]}),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=token("<|image_pad|>"), video_token_id=token("<|video_pad|>"),
        vision_start_token_id=token("<|vision_start|>"),
        vision_end_token_id=token("<|vision_end|>"))
    torch.manual_seed(seed)
    Qwen2VLForConditionalGeneration(config).eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
