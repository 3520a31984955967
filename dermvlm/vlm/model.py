"""The skin VLM: open_clip image tower -> projector -> causal LM (LLaVA-style).

    pixels (B, 3, S, S) -> class + patch tokens (B, 1 + N, W)   [last transformer layer, no
                                                                 ln_post]
      -> patches: optional f x f average pooling (B, N/f^2, W)
      -> [class token, pooled patches] (vlm.class_token) or the pooled patches alone (LLaVA's
         layer -1 "full" or "default" selection) -> projector (B, N', D)
      -> written into the LM's input embeddings where input_ids == <image> (N' per image)

Why the class token: with CLS pooling, CLIP's loss reads only the class token of the last
layer, so that layer's patch outputs are never trained directly and carry less of what the
contrastive loss learnt (the probe figures are in docs/EXPERIMENTS.md).

A saved VLM folder holds dermvlm_vlm.json (config + references to the bases), vision and
projector safetensors, the tokenizer (with <image> added) and the LoRA adapter; the base LM is
referenced, not copied.
"""
import json
import math
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from dermvlm.config import VLMConfig, check_choice
from dermvlm.errors import DermvlmError

IMAGE_TOKEN = "<image>"
VISION_FILE = "vision.safetensors"


class VisionTower(torch.nn.Module):
    """Class token then patch tokens of an open_clip VisionTransformer (B, 1 + N, W)."""

    def __init__(self, visual):
        super().__init__()
        self.visual = visual
        grid = visual.grid_size
        self.num_tokens = grid[0] * grid[1]
        self.width = visual.transformer.width
        self.image_size = visual.image_size[0]

    def forward(self, pixels):
        x = self.visual._embeds(pixels)          # (B, 1 + N, W) after ln_pre
        return self.visual.transformer(x)        # (B, 1 + N, W)


class ConvVisionTower(torch.nn.Module):
    """The pooled feature, then the final feature map's positions, of an open_clip timm
    (convolutional) tower (B, 1 + h*w, C). The pooled feature plays the class token: it is
    what the CLIP head reads, so it carries what alignment learnt; the map keeps where."""

    def __init__(self, visual):
        super().__init__()
        self.visual = visual
        self.width = visual.trunk.num_features
        self.image_size = visual.image_size[0]
        # h*w of the final map at this size, in eval mode: a forward in train mode would move
        # the batch-norm running statistics towards a blank image's
        training, _ = visual.training, visual.eval()
        with torch.no_grad():
            probe = visual.trunk.forward_features(torch.zeros(1, 3, self.image_size,
                                                              self.image_size))
        visual.train(training)
        self.num_tokens = probe.shape[2] * probe.shape[3]

    def forward(self, pixels):
        fmap = self.visual.trunk.forward_features(pixels)        # (B, C, h, w)
        tokens = fmap.flatten(2).transpose(1, 2)                 # (B, h*w, C)
        return torch.cat([tokens.mean(1, keepdim=True), tokens], dim=1)


def vision_tower(visual):
    """The VLM's view of an open_clip image tower: a ViT's tokens or a conv tower's map."""
    from open_clip.timm_model import TimmModel
    return ConvVisionTower(visual) if isinstance(visual, TimmModel) else VisionTower(visual)


def make_projector(kind, in_dim, out_dim):
    if check_choice("vlm.projector", kind) == "linear":
        return torch.nn.Linear(in_dim, out_dim)
    return torch.nn.Sequential(torch.nn.Linear(in_dim, out_dim), torch.nn.GELU(),  # mlp2x_gelu
                               torch.nn.Linear(out_dim, out_dim))


def pool_tokens(tokens, factor):
    """(B, N, W) -> (B, N / factor^2, W) by average pooling on the patch grid."""
    if factor == 1:
        return tokens
    b, n, w = tokens.shape
    side = int(math.isqrt(n))
    grid = tokens.transpose(1, 2).reshape(b, w, side, side)
    return F.avg_pool2d(grid, factor, ceil_mode=True).flatten(2).transpose(1, 2)


class LossOutput(dict):
    """The part of a HF ModelOutput the trainer reads (`.loss`)."""
    __getattr__ = dict.__getitem__


def target_mask(labels):
    """(B, T-1) bool: the positions whose next token is a target (label not -100)."""
    return labels[:, 1:] != -100


def row_weights(labels, weighting="token"):
    """(B,) weight of each target token of each row (one conversation per row). `token`:
    1, every token counts the same, so long answers (a 190-token JSON report) outweigh short
    ones (a letter); `sample`: 1 / the row's target count, every conversation counts the
    same; `square`: 1 / sqrt(count), between the two (InternVL 2.5's square averaging)."""
    counts = target_mask(labels).sum(1).float()                                # (B,)
    if weighting == "token":
        return torch.ones_like(counts)
    power = {"sample": 1.0, "square": 0.5}[weighting]
    return torch.where(counts > 0, counts.clamp_min(1).pow(-power), torch.zeros_like(counts))


def target_weight(labels, weighting="token"):
    """The total weight of a batch's target tokens, the denominator of its weighted mean:
    their count (an int) for `token`."""
    if weighting == "token":
        return int(target_mask(labels).sum())
    return float((row_weights(labels, weighting) * target_mask(labels).sum(1)).sum())


def chunked_lm_loss(hidden, labels, lm_head, chunk=1024, weighting="token"):
    """Weighted mean next-token cross-entropy over positions whose label is not -100 (each
    token weighs its row's `row_weights`; `token` is the plain mean).

    hidden (B, T, D), labels (B, T). Only target positions go through lm_head, `chunk` rows at
    a time, so memory is O(chunk x vocab) instead of O(B x T x vocab)."""
    keep = target_mask(labels)
    rows, ys = hidden[:, :-1][keep], labels[:, 1:][keep]                     # (M, D), (M,)
    if ys.numel() == 0:
        return hidden.sum() * 0.0
    weights = row_weights(labels, weighting)[:, None].expand_as(keep)[keep]    # (M,)
    total = hidden.new_zeros((), dtype=torch.float32)
    for i in range(0, ys.numel(), chunk):
        logits = lm_head(rows[i:i + chunk]).float()                    # (<=chunk, V)
        losses = F.cross_entropy(logits, ys[i:i + chunk], reduction="none")
        total = total + (losses * weights[i:i + chunk]).sum()
    return total / weights.sum()


class DermVLM(torch.nn.Module):
    def __init__(self, config, vision, lm, tokenizer, vision_cfg):
        super().__init__()
        self.config, self.vision, self.lm, self.tokenizer = config, vision, lm, tokenizer
        self.vision_cfg = vision_cfg                 # open_clip model_cfg of the image tower
        hidden = lm.get_input_embeddings().weight.shape[1]
        self.projector = make_projector(config.projector, vision.width, hidden)
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)

    @property
    def num_image_tokens(self):
        """<image> positions per image: the pooled patch grid, plus the class token. Read
        from the config, so a warm start that changes vlm.token_pool takes effect."""
        pooled_side = math.ceil(math.isqrt(self.vision.num_tokens) / self.config.token_pool)
        return pooled_side * pooled_side + int(self.config.class_token)

    @property
    def device(self):
        return self.projector[0].weight.device if isinstance(
            self.projector, torch.nn.Sequential) else self.projector.weight.device

    def image_embeddings(self, pixels):
        """(B, N', D) projected image tokens."""
        tokens = self.vision(pixels.to(self.device))                   # (B, 1 + N, W)
        patches = pool_tokens(tokens[:, 1:], self.config.token_pool)
        if self.config.class_token:
            patches = torch.cat([tokens[:, :1], patches], dim=1)
        return self.projector(patches.to(self.projector_dtype))

    @property
    def projector_dtype(self):
        return next(self.projector.parameters()).dtype

    def embed(self, input_ids, pixel_values):
        """Input embeddings (B, T, D) with image embeddings at the <image> positions."""
        return self._embed(input_ids, pixel_values)[0]

    def _embed(self, input_ids, pixel_values):
        """(input embeddings (B, T, D), projected image tokens (B, N', D) or None)."""
        embeds = self.lm.get_input_embeddings()(input_ids)
        mask = input_ids == self.image_token_id
        if pixel_values is None or not mask.any():
            return embeds, None
        images = self.image_embeddings(pixel_values)                   # (B, N', D)
        if int(mask.sum()) != images.shape[0] * images.shape[1]:
            raise DermvlmError(f"{int(mask.sum())} <image> positions for {images.shape[0]} "
                               f"image(s) of {images.shape[1]} tokens each")
        embeds = embeds.clone()
        embeds[mask] = images.reshape(-1, images.shape[-1]).to(embeds.dtype)
        return embeds, images

    def image_norm_penalty(self, images):
        """Mean squared log-ratio of each image token's norm to the LM's mean input-embedding
        norm: without it stage 1 lets image tokens grow far past the norm of text tokens. An
        option to try, off by default (docs/EXPERIMENTS.md has what it did)."""
        weight = self.lm.get_input_embeddings().weight
        target = weight.detach().float().norm(dim=-1).mean()
        ratio = images.float().norm(dim=-1) / target                   # (B, N')
        return ratio.clamp_min(1e-6).log().pow(2).mean()

    def forward(self, input_ids, attention_mask=None, pixel_values=None, labels=None, **kw):
        """HF causal-LM output. With labels, the loss is computed on target tokens only, in
        chunks: full-vocabulary fp32 logits are never materialised for the whole batch."""
        embeds, images = self._embed(input_ids, pixel_values)
        if labels is None:
            return self.lm(inputs_embeds=embeds, attention_mask=attention_mask, **kw)
        base = self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm
        hidden = base.model(inputs_embeds=embeds, attention_mask=attention_mask)[0]  # (B,T,D)
        loss = chunked_lm_loss(hidden, labels, base.lm_head,
                               weighting=getattr(self.config, "loss_weighting", "token"))
        if self.config.image_norm_weight and images is not None:
            loss = loss + self.config.image_norm_weight * self.image_norm_penalty(images)
        return LossOutput(loss=loss)

    # ---- saving and loading
    def save_pretrained(self, folder, state_dict=None):
        """Write the VLM folder. `state_dict`: the whole model's weights by name (gathered
        from FSDP shards, dermvlm.vlm.sharding), used instead of the modules' own."""
        def part(prefix, module):
            if state_dict is None:
                return module.state_dict()
            return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"vlm": asdict(self.config), "vision_cfg": self.vision_cfg,
                "image_token": IMAGE_TOKEN, "num_image_tokens": self.num_image_tokens,
                "image_size": self.vision.image_size, "format": "dermvlm-vlm/1",
                "has_adapter": hasattr(self.lm, "peft_config")}
        (folder / "dermvlm_vlm.json").write_text(json.dumps(meta, indent=1))
        save_file({k: v.contiguous() for k, v in part("vision.", self.vision).items()},
                  folder / VISION_FILE)
        save_file({k: v.contiguous() for k, v in part("projector.", self.projector).items()},
                  folder / "projector.safetensors")
        self.tokenizer.save_pretrained(folder / "tokenizer")
        if hasattr(self.lm, "peft_config"):
            # the resized embedding rows are rebuilt exactly at load (add_image_token zeroes
            # them), so the adapter holds only LoRA weights: MBs, not a copy of the vocabulary
            self.lm.save_pretrained(folder / "adapter", save_embedding_layers=False,
                                    state_dict=None if state_dict is None
                                    else part("lm.", self.lm))
        return folder

    @classmethod
    def from_pretrained(cls, folder, device="cpu", dtype=torch.float32, merge_lora=True,
                        vision=None):
        """A VLM for inference (LoRA merged by default; merge_lora=False keeps the adapter).
        `vision`: see load_vlm_folder."""
        return load_vlm_folder(folder, device=device, dtype=dtype, merge_lora=merge_lora,
                               vision=vision)


def vlm_config_from(meta):
    # folders saved before vlm.class_token existed passed the patch tokens alone
    return VLMConfig(**{"class_token": False, **meta["vlm"]})


def add_image_token(lm, tokenizer):
    """Add <image> to the tokenizer and a zero embedding row to the LM (deterministic: the
    row is never read as input, since image embeddings replace it)."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    old = lm.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > old:
        lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            lm.get_input_embeddings().weight[old:] = 0
            output = lm.get_output_embeddings()
            if output is not None and output.weight.data_ptr() != \
                    lm.get_input_embeddings().weight.data_ptr():
                output.weight[old:] = 0


def projector_input_width(folder):
    """The image-token width a saved VLM folder's projector takes."""
    first = load_file(Path(folder) / "projector.safetensors")
    key = next(k for k in sorted(first) if k.endswith("weight"))
    return first[key].shape[1]


def vision_weights_file(folder):
    """The safetensors file holding a VLM folder's image tower ("visual.*" tensors): its own
    vision.safetensors, or the file its dermvlm_vlm.json names by relative path (the embedded
    default's VLM reads the tower from ../clip/clip_weights.safetensors, stored once)."""
    folder = Path(folder)
    meta = json.loads((folder / "dermvlm_vlm.json").read_text())
    path = (folder / meta.get("vision_weights", VISION_FILE)).resolve()
    if not path.is_file():
        raise DermvlmError(f"{folder}: the image tower's weights {path} are missing")
    return path


def load_vlm_folder(folder, device="cpu", dtype=torch.float32, lm=None, merge_lora=False,
                    vision=None, fresh_projector=False):
    """Load a saved VLM folder (base LM by reference, adapter, projector, vision).
    merge_lora=True folds the adapter into the LM weights: same outputs, faster decoding.
    `vision`: an already loaded open_clip image tower with the same weights (the app passes
    its zero-shot model's, so the tower is in memory once). `fresh_projector`: keep the new
    projector's random weights (a warm start onto a tower of another width)."""
    import open_clip
    from transformers import AutoTokenizer

    from dermvlm.vlm.drafts import read_drafts
    from dermvlm.vlm.lm import load_lm
    folder = Path(folder)
    meta_file = folder / "dermvlm_vlm.json"
    if not meta_file.is_file():
        raise DermvlmError(f"{folder}: not a dermvlm VLM folder (no dermvlm_vlm.json)")
    meta = json.loads(meta_file.read_text())
    config = vlm_config_from(meta)
    if vision is None:
        weights = load_file(vision_weights_file(folder))
        vision = open_clip.model._build_vision_tower(meta["vision_cfg"]["embed_dim"],
                                                     meta["vision_cfg"]["vision_cfg"])
        vision_tower(vision).load_state_dict(
            {k: v for k, v in weights.items() if k.startswith("visual.")})
    if lm is None:
        try:
            lm, _ = load_lm(config.lm, dtype=dtype, device=device)
        except OSError as exc:
            raise DermvlmError(f"{folder}: cannot load the base LM {config.lm!r}: {exc}")
    tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    add_image_token(lm, tokenizer)
    if (folder / "adapter").is_dir():
        from peft import PeftModel
        lm = PeftModel.from_pretrained(lm, folder / "adapter")
        if merge_lora:
            lm = lm.merge_and_unload()
    elif meta.get("has_adapter"):
        raise DermvlmError(f"{folder}: the LoRA adapter folder {folder / 'adapter'} is missing")
    vlm = DermVLM(config, vision_tower(vision).eval(), lm, tokenizer, meta["vision_cfg"])
    if not fresh_projector:
        vlm.projector.load_state_dict(load_file(folder / "projector.safetensors"))
    vlm.draft_texts = read_drafts(folder)     # replies to draft from (dermvlm.vlm.drafts)
    return vlm.to(device).eval()
