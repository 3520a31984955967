"""Contrastive training of an open_clip model on image-caption pairs.

One loop for CPU, one GPU or many (torchrun: DDP, gloo on CPU, nccl on GPU). Checkpoints are
open_clip local-dir folders plus train_state.pt (optimizer, scheduler, step), written
atomically; a rerun with the same output folder resumes from the latest one and reproduces the
loss curve of an uninterrupted run. A non-finite loss stops training and leaves the last good
checkpoint as it was.
"""
import math
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss
from tqdm import tqdm

from dermvlm.clip.data import (BatchOrder, PairsDataset, ShardPairs, collate_pairs,
                               hard_negative, load_records, sample_key, train_transform)
from dermvlm.clip.model import build_model, save_model
from dermvlm.config import check_choice
from dermvlm.errors import DermvlmError
from dermvlm.imaging import eval_transform, try_open_image
from dermvlm.training import (TrainingError, all_ranks_sum, distributed, latest_checkpoint,
                              log_metrics, save_checkpoint, truncate_metrics, warmup_cosine)
from dermvlm.zeroshot import trim_padding


class ClipTrainModule(torch.nn.Module):
    """The forward DDP wraps: images (B, ...) + texts (T: B captions, then any hard
    negatives) as tokens or cached pooled text -> normalised features (B, D), (T, D)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images, tokens=None, pooled_text=None):
        image_features = self.model.encode_image(images, normalize=True)     # (B, D)
        if pooled_text is not None:                                         # locked HF tower
            text_features = F.normalize(self.model.text.proj(pooled_text), dim=-1)
        else:
            text_features = self.model.encode_text(tokens, normalize=True)  # (T, D)
        return image_features, text_features


class TextCache:
    """Pooled outputs of a frozen HF text transformer, one per distinct caption (the
    trainable projection still runs every step)."""

    def __init__(self, model, tokenizer, device):
        self.model, self.tokenizer, self.device, self.store = model, tokenizer, device, {}

    @torch.no_grad()
    def __call__(self, captions):
        missing = [c for c in dict.fromkeys(captions) if c not in self.store]
        if missing:
            text = self.model.text
            text.transformer.eval()
            tokens = trim_padding(self.model, self.tokenizer(missing)).to(self.device)
            mask = (tokens != text.config.pad_token_id).long()
            pooled = text.pooler(text.transformer(input_ids=tokens, attention_mask=mask), mask)
            self.store.update(zip(missing, pooled.float()))
        return torch.stack([self.store[c] for c in captions])


def _hard_negatives(captions, indices, cfg, step):
    """(B * K texts, (B, K) bool): K swapped captions per caption, image-major; a caption
    with no word to swap stands in for itself and is masked out. Keyed by step and sample
    index, so a resumed run, or one on another number of ranks, draws the same ones."""
    k = cfg.hard_negatives
    texts, mask = [], torch.zeros(len(captions), k, dtype=torch.bool)
    for i, (caption, index) in enumerate(zip(captions, indices)):
        for j in range(k):
            swapped = hard_negative(caption, sample_key(cfg.seed, step, index, j))
            texts.append(swapped or caption)
            mask[i, j] = swapped is not None
    return texts, mask


def negative_loss(image_features, text_features, negative_features, has_negative, scale):
    """Mean over images of the cross-entropy of each image's own text against its K swapped
    ones: (B, D), (B, D), (B * K, D), (B, K) bool. An image with no swapped text adds 0."""
    b, k = has_negative.shape
    positive = (image_features * text_features).sum(-1, keepdim=True)            # (B, 1)
    negative = torch.einsum("bd,bkd->bk", image_features,
                            negative_features.view(b, k, -1))                     # (B, K)
    logits = scale * torch.cat([positive, negative], dim=1)                         # (B, 1+K)
    # masked after scaling: d(loss)/d(scale) would meet 0 * -inf = nan
    keep = torch.cat([torch.ones_like(has_negative[:, :1]), has_negative], dim=1)
    logits = logits.masked_fill(~keep.to(logits.device), float("-inf"))
    return F.cross_entropy(logits, torch.zeros(b, dtype=torch.long, device=logits.device))


def make_optimizer(model, cfg):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or "logit" in name or "bias" in name else decay).append(p)
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr,
                             betas=(0.9, 0.98), eps=1e-6)


def apply_text_mode(model, cfg):
    check_choice("clip.image_mode", cfg.image_mode)
    check_choice("clip.text_mode", cfg.text_mode)
    if cfg.hard_negatives < 0:
        raise DermvlmError(f"clip.hard_negatives must be 0 (off) or more swapped captions "
                           f"per pair, got {cfg.hard_negatives}")
    if cfg.text_regression and cfg.text_mode != "locked":
        # a trainable text side could meet the images by giving up its own space
        raise DermvlmError(f"clip.text_regression={cfg.text_regression} needs "
                           f"clip.text_mode=locked, got {cfg.text_mode!r} (set "
                           f"clip.text_regression=0 to train the text tower)")
    if cfg.image_mode == "locked":
        model.lock_image_tower(unlocked_groups=0)
    if cfg.text_mode == "locked":
        model.lock_text_tower(unlocked_layers=0, freeze_layer_norm=True)
    elif cfg.text_mode == "lora":
        from peft import LoraConfig, get_peft_model
        if not hasattr(model.text, "transformer"):
            raise DermvlmError("clip.text_mode=lora needs a HuggingFace text tower")
        model.lock_text_tower(unlocked_layers=0, freeze_layer_norm=True)
        lora = LoraConfig(r=cfg.text_lora_rank, lora_alpha=2 * cfg.text_lora_rank,
                          target_modules=["query", "key", "value", "dense"], lora_dropout=0.0)
        model.text.transformer = get_peft_model(model.text.transformer, lora)


def _save_checkpoint(out_dir, step, module, model_cfg, config, optimizer, scheduler, keep=2):
    model = module.model
    state = {"step": step, "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict()}
    if _has_lora(model):   # the folder gets merged weights; resuming needs the adapter itself
        state["lora_model"] = model.state_dict()
    return save_checkpoint(out_dir, step, lambda folder: save_model(
        export_model(model), model_cfg, folder, extra_config=config.to_dict()), state, keep)


def _has_lora(model):
    return hasattr(getattr(model.text, "transformer", None), "merge_and_unload")


def export_model(model):
    """The model as plain open_clip (a LoRA text tower merged into a copy)."""
    if not _has_lora(model):
        return model
    import copy
    plain = copy.deepcopy(model)
    plain.text.transformer = plain.text.transformer.merge_and_unload()
    return plain


def _data_loader(cfg, data, transform, micro_batch, start, rank, world):
    sampling = check_choice("clip.text_sampling", cfg.text_sampling)
    if Path(data).is_dir() and any(Path(data).glob("*.tar")):
        stream = ShardPairs(data, transform, micro_batch, seed=cfg.seed, start=start,
                            rank=rank, world_size=world, sampling=sampling)
        return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=0), None
    records = load_records(data)
    dataset = PairsDataset(records, transform, seed=cfg.seed, sampling=sampling)
    order = BatchOrder(len(records), micro_batch, cfg.seed, start=start, rank=rank,
                       world_size=world)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=order, collate_fn=collate_pairs,
                                         num_workers=cfg.workers,
                                         persistent_workers=cfg.workers > 0)
    return loader, records


def train_clip(config, data, out_dir, val=None, max_steps=None, progress=True):
    """Train `config.clip` on `data`; returns a summary. `max_steps` stops early (as if
    interrupted) after that many optimizer steps in this call."""
    cfg = config.clip
    torch.manual_seed(cfg.seed)
    rank, world, device = distributed()
    out_dir = Path(out_dir)
    if cfg.batch_size % (world * cfg.grad_accum):
        raise DermvlmError(f"clip.batch_size {cfg.batch_size} must divide by world size "
                           f"{world} x grad_accum {cfg.grad_accum}")
    model, model_cfg, tokenizer = build_model(cfg)
    apply_text_mode(model, cfg)
    resume_from = latest_checkpoint(out_dir)
    start_step, state = 0, None
    if resume_from is not None:
        from safetensors.torch import load_file
        state = torch.load(resume_from / "train_state.pt", map_location="cpu",
                           weights_only=True)
        model.load_state_dict(state.get("lora_model") or
                              load_file(resume_from / "open_clip_model.safetensors"))
    model.to(device)
    module = ClipTrainModule(model)
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                  warmup_cosine(cfg.warmup_steps, cfg.steps))
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_step = state["step"]
    train_module = (torch.nn.parallel.DistributedDataParallel(module) if world > 1 else module)
    use_cache = cfg.cache_text and cfg.text_mode == "locked" and hasattr(model.text,
                                                                         "transformer")
    text_cache = TextCache(model, tokenizer, device) if use_cache else None
    siglip = check_choice("clip.loss", cfg.loss) == "siglip"
    loss_fn = (SigLipLoss(rank=rank, world_size=world) if siglip else
               ClipLoss(local_loss=False, gather_with_grad=True, rank=rank, world_size=world))
    micro = cfg.batch_size // cfg.grad_accum                     # global micro-batch
    loader, _ = _data_loader(cfg, data, train_transform(cfg.image_size), micro,
                             start_step * cfg.grad_accum, rank, world)
    autocast = device.type == "cuda" and cfg.precision in ("auto", "bf16")
    out_dir.mkdir(parents=True, exist_ok=True)   # every rank gets here; a bare mkdir races
    metrics_path = out_dir / "metrics.jsonl"
    if rank == 0:                                # only rank 0 logs, so only it rewrites the log
        truncate_metrics(metrics_path, start_step)
    val_set = _load_val(val, cfg) if (val and rank == 0) else None
    end_step = cfg.steps if max_steps is None else min(cfg.steps, start_step + max_steps)
    bar = tqdm(total=cfg.steps, initial=start_step, desc="clip", unit="step",
               disable=not progress or rank != 0)
    batches, step, skipped, last_ckpt = iter(loader), start_step, 0, resume_from
    started = time.perf_counter()
    while step < end_step:
        optimizer.zero_grad(set_to_none=True)
        total, local = 0.0, 0.0     # local: this rank's per-image terms (DDP logging)
        for _ in range(cfg.grad_accum):
            images, captions, indices, n_bad = next(batches)
            skipped += n_bad
            images = images.to(device, non_blocking=True)
            n = len(captions)
            negatives, has_negative = _hard_negatives(captions, indices, cfg, step)
            texts = captions + negatives
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
                if text_cache is not None:
                    img_f, txt_f = train_module(images, pooled_text=text_cache(texts))
                else:
                    tokens = trim_padding(model, tokenizer(texts)).to(device)
                    img_f, txt_f = train_module(images, tokens=tokens)
                txt_f, neg_f = txt_f[:n], txt_f[n:]           # (B, D), (B * K, D)
                scale = model.logit_scale.exp()
                bias = getattr(model, "logit_bias", None)
                loss = (loss_fn(img_f, txt_f, scale, bias) if siglip
                        else loss_fn(img_f, txt_f, scale))
                per_image = 0.0
                if cfg.text_regression:
                    per_image = cfg.text_regression * (1 - (img_f * txt_f).sum(-1)).mean()
                if cfg.hard_negatives:
                    per_image = per_image + negative_loss(img_f, txt_f, neg_f, has_negative,
                                                          scale)
                loss = loss + per_image
                if world > 1 and torch.is_tensor(per_image):   # a sync per .item(): DDP only
                    local += per_image.item() / cfg.grad_accum
                loss = loss / cfg.grad_accum
            if not torch.isfinite(loss):
                bar.close()
                where = f"{last_ckpt}" if last_ckpt else "none was written yet"
                raise TrainingError(f"loss became {loss.item()} at step {step + 1}; stopped "
                                    f"without saving. Last good checkpoint: {where}")
            loss.backward()
            total += loss.item()
        if (cfg.text_regression or cfg.hard_negatives) and world > 1:
            # the contrastive loss is over the gathered global batch, the same on every rank;
            # the per-image terms are over this rank's images (DDP's gradient mean makes them
            # the global mean), so the logged loss takes their mean over the ranks too
            total += all_ranks_sum(local, world, device) / world - local
        optimizer.step()
        scheduler.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{total:.3f}")
        if rank == 0 and (step % cfg.log_every == 0 or step == end_step):
            log_metrics(metrics_path, {"step": step, "loss": round(total, 6),
                                       "lr": scheduler.get_last_lr()[0],
                                       "logit_scale": model.logit_scale.exp().item(),
                                       "skipped_unreadable": skipped,
                                       "seconds": round(time.perf_counter() - started, 2)})
        if rank == 0 and val_set is not None and (step % cfg.eval_every == 0 or
                                                  step == cfg.steps):
            scores = evaluate_pairs(model, tokenizer, val_set, cfg.image_size, device)
            log_metrics(metrics_path, {"step": step, "eval": scores})
        if rank == 0 and (step % cfg.ckpt_every == 0 or step == end_step):
            last_ckpt = _save_checkpoint(out_dir, step, module, model_cfg, config, optimizer,
                                         scheduler)
    bar.close()
    summary = {"steps": step, "final_loss": total if step > start_step else None,
               "resumed_from": str(resume_from) if resume_from else None,
               "skipped_unreadable": skipped, "checkpoint": str(last_ckpt) if last_ckpt else None}
    if rank == 0 and step == cfg.steps:
        summary["model"] = str(save_model(export_model(model), model_cfg, out_dir / "model",
                                          extra_config=config.to_dict()))
    if world > 1:
        dist.barrier()
    return summary


def _load_val(val, cfg):
    records = load_records(val)
    transform = eval_transform(cfg.image_size)
    kept = [(r, try_open_image(r.image)) for r in records]
    kept = [(r, img) for r, img in kept if img is not None]
    images = torch.stack([transform(img) for _, img in kept])
    return [r for r, _ in kept], images


@torch.no_grad()
def evaluate_pairs(model, tokenizer, val_set, image_size, device):
    """Zero-shot diagnosis accuracy (DermLIP prompts), retrieval R@K and, on SynthDerm records,
    zero-shot top-1 per attribute family (eval.zeroshot's prompts) on a validation set."""
    from dermvlm.clip.evaluate import attribute_metrics, diagnosis_metrics
    from dermvlm.zeroshot import ZeroShot, retrieval_recall
    records, images = val_set
    was_training = model.training
    model.eval()
    zs = ZeroShot(model, tokenizer, device=device)
    image_features = zs.encode_images(images)
    diagnosis = diagnosis_metrics(zs, image_features, records)
    out = {f"zeroshot_{key}": value for key, value in diagnosis.items()    # top1, top5
           if key.startswith("top") and key[3:].isdigit()}
    captions = [r.captions[0] if r.captions else (r.label or "") for r in records]
    out.update(retrieval_recall(image_features, zs.encode_texts(captions)))
    if any("attributes" in r.meta for r in records):
        out["attribute_top1"] = {family: scores["top1"] for family, scores in
                                 attribute_metrics(zs, image_features, records).items()}
    model.train(was_training)
    return out
