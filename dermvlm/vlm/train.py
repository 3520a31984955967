"""VLM training. Stage 1: the projector learns on captions (LM and vision frozen). Stage 2:
instruction tuning on conversations (LoRA on the LM, projector trainable, vision frozen).

Same machinery as the CLIP trainer: deterministic batch order (exact resume), atomic
checkpoints (a VLM folder + train_state.pt), JSONL metrics, DDP or FSDP (vlm.parallel, see
dermvlm.vlm.sharding) under torchrun or `accelerate launch`, and a stop with a message on a
non-finite loss. Checkpoints hold full, name-keyed state: any world size resumes them.
"""
import dataclasses
import functools
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from dermvlm.clip.data import BatchOrder
from dermvlm.config import check_choice
from dermvlm.errors import DermvlmError
from dermvlm.training import (TrainingError, all_ranks_sum, distributed, latest_checkpoint,
                              log_metrics, save_checkpoint, truncate_metrics, warmup_cosine)
from dermvlm.vlm.build import apply_lora, build_vlm, load_vlm_folder, vision_from_clip
from dermvlm.vlm.data import ConversationDataset, collate, load_conversations
from dermvlm.vlm.model import projector_input_width, target_weight
from dermvlm.vlm.sharding import (full_model_state, full_optimizer_state, load_optimizer_state,
                                  shard_vlm)


def prepare_vlm(config, stage, init=None, device="cpu", parts=None):
    """The model to train. Stage 1: a fresh VLM from parts, or (warm start) the VLM folder
    `init` with the tower of vlm.vision, its LM (and any adapter) frozen. Stage 2: a folder
    plus LoRA; a folder that already has an adapter keeps training it."""
    cfg = config.vlm
    if stage == 1 and not init:
        lm, tokenizer, vision = parts if parts else (None, None, None)
        vlm = build_vlm(cfg, device=device, lm=lm, tokenizer=tokenizer, vision=vision)
    elif stage in (1, 2):
        if not init:
            raise DermvlmError("stage 2 starts from a stage-1 folder: pass --init RUN1/model")
        # a warm start re-aligns a trained VLM to the tower of vlm.vision (a new CLIP run)
        tower, vision_cfg = vision_from_clip(cfg.vision) if stage == 1 and cfg.vision \
            else (None, None)
        fresh = tower is not None and projector_input_width(init) != tower.width
        if fresh:
            print(f"warm start: {init}'s projector takes {projector_input_width(init)}-d "
                  f"image tokens, the new tower gives {tower.width}-d: a fresh projector, "
                  "the adapter kept", file=sys.stderr)
        vlm = load_vlm_folder(init, device=device, lm=parts[0] if parts else None,
                              vision=tower.visual if tower else None, fresh_projector=fresh)
        if vision_cfg is not None:
            vlm.vision_cfg = vision_cfg         # saved with the tower it now has
        vlm.config = dataclasses.replace(cfg, vision=cfg.vision or vlm.config.vision)
    else:
        raise DermvlmError(f"--stage must be 1 or 2, got {stage}")
    for p in vlm.lm.parameters():
        p.requires_grad = False
    if stage == 2:
        if hasattr(vlm.lm, "peft_config"):
            for name, p in vlm.lm.named_parameters():
                p.requires_grad = "lora_" in name
        else:
            vlm.lm = apply_lora(vlm.lm, cfg)
    for p in vlm.vision.parameters():
        p.requires_grad = False
    for p in vlm.projector.parameters():
        p.requires_grad = True
    return vlm


def _next_batch(batches, device):
    batch = next(batches)
    while batch is None:                    # every item of the micro-batch was unreadable
        batch = next(batches)
    return tuple(t.to(device) for t in batch)


def _save_checkpoint(out_dir, step, vlm, optimizer, scheduler, rank, sharded, keep=2):
    """Every rank calls it (under FSDP the full state is gathered from all); rank 0 writes
    the full weights and the optimizer state by parameter name, so any world size resumes.
    Returns the checkpoint folder on rank 0, None on the others."""
    weights = full_model_state(vlm) if sharded else None
    optimizer_state = full_optimizer_state(vlm, optimizer)
    if rank != 0:
        return None
    return save_checkpoint(out_dir, step, lambda folder: vlm.save_pretrained(folder, weights),
                           {"step": step, "optimizer_by_name": optimizer_state,
                            "scheduler": scheduler.state_dict()}, keep)


def _restore(vlm, folder):
    from safetensors.torch import load_file
    vlm.projector.load_state_dict(load_file(folder / "projector.safetensors"))
    adapter = folder / "adapter" / "adapter_model.safetensors"
    if adapter.is_file():
        from peft import set_peft_model_state_dict
        set_peft_model_state_dict(vlm.lm, load_file(adapter))


def train_vlm(config, data, out_dir, stage, init=None, max_steps=None, progress=True,
              parts=None):
    """Train one stage; returns a summary (the final VLM folder is out_dir/model)."""
    cfg = config.vlm
    torch.manual_seed(cfg.seed)
    rank, world, device = distributed()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    total_steps = cfg.stage1_steps if stage == 1 else cfg.stage2_steps
    vlm = prepare_vlm(config, stage, init, device, parts)
    resume_from, start, state = latest_checkpoint(out_dir), 0, None
    if resume_from is not None:                 # full weights, whatever world size saved them
        _restore(vlm, resume_from)
        state = torch.load(resume_from / "train_state.pt", map_location="cpu", weights_only=True)
        start = state["step"]
    vlm.lm.train()
    sharded = check_choice("vlm.parallel", cfg.parallel) == "fsdp" and world > 1
    if sharded:
        model = shard_vlm(vlm, check_choice("vlm.mixed_precision", cfg.mixed_precision))
    elif world > 1:
        model = torch.nn.parallel.DistributedDataParallel(vlm, find_unused_parameters=True)
    else:
        model = vlm
    trainable = [p for p in vlm.parameters() if p.requires_grad]    # shards under FSDP
    lr = cfg.lr_stage1 if stage == 1 else cfg.lr_stage2
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                  warmup_cosine(cfg.warmup_steps, total_steps))
    if state is not None:
        if "optimizer_by_name" in state:
            load_optimizer_state(vlm, optimizer, state["optimizer_by_name"])
        else:                                   # a checkpoint from before names were kept
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    items = load_conversations(data, stage)
    dataset = ConversationDataset(items, vlm.tokenizer, vlm.num_image_tokens,
                                  vlm.vision.image_size, cfg.max_length, seed=cfg.seed)
    micro = cfg.batch_size // cfg.grad_accum
    order = BatchOrder(len(items), micro, cfg.seed, start=start * cfg.grad_accum, rank=rank,
                       world_size=world)
    pad = vlm.tokenizer.pad_token_id
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=order, num_workers=cfg.workers,
                                         collate_fn=functools.partial(collate, pad_id=pad))
    metrics = out_dir / "metrics.jsonl"
    if rank == 0:                                # only rank 0 logs, so only it rewrites the log
        truncate_metrics(metrics, start)
    end = total_steps if max_steps is None else min(total_steps, start + max_steps)
    bar = tqdm(total=total_steps, initial=start, desc=f"vlm stage {stage}", unit="step",
               disable=not progress or rank != 0)
    batches, step, last_ckpt, loss_sum = iter(loader), start, resume_from, None
    started = time.perf_counter()
    while step < end:
        optimizer.zero_grad(set_to_none=True)
        micro_batches = [_next_batch(batches, device) for _ in range(cfg.grad_accum)]
        # Each target token weighs the same whatever micro-batch or rank it is in: the loss
        # is the (vlm.loss_weighting-weighted) sum over this step's targets on every rank /
        # their global weight (a per-micro-batch mean would weigh tokens of short batches
        # more, and differ from one big batch).
        counts = [target_weight(labels, cfg.loss_weighting) for _, _, labels, _ in micro_batches]
        tokens = all_ranks_sum(sum(counts), world, device)
        loss_sum = 0.0                                      # summed token loss, this rank
        for (ids, mask, labels, pixels), count in zip(micro_batches, counts):
            out = model(input_ids=ids, attention_mask=mask, pixel_values=pixels, labels=labels)
            # every rank learns of a non-finite loss on any rank, so all stop here together
            # (one rank stopping alone would leave the others waiting in the gradient sync)
            finite = bool(torch.isfinite(out.loss))
            bad_ranks = all_ranks_sum(int(not finite), world, device)
            if bad_ranks:
                bar.close()
                value = "non-finite" if finite else out.loss.item()
                where = f" on {bad_ranks} of {world} ranks" if world > 1 else ""
                last_good = latest_checkpoint(out_dir) or "none yet"    # rank 0 saved it
                raise TrainingError(f"loss became {value} at step {step + 1}{where}; stopped. "
                                    f"Last good checkpoint: {last_good}")
            # out.loss is the micro-batch mean; DDP and FSDP average gradients over ranks,
            # hence world
            (out.loss * count * world / max(1, tokens)).backward()
            loss_sum += out.loss.item() * count
        loss_sum = all_ranks_sum(loss_sum, world, device) / max(1, tokens)
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum:.3f}")
        if rank == 0 and (step % cfg.log_every == 0 or step == end):
            log_metrics(metrics, {"step": step, "stage": stage, "loss": round(loss_sum, 6),
                                  "lr": scheduler.get_last_lr()[0], "target_weight": tokens,
                                  "seconds": round(time.perf_counter() - started, 2)})
        if step % cfg.ckpt_every == 0 or step == end:          # every rank: gathers
            last_ckpt = _save_checkpoint(out_dir, step, vlm, optimizer, scheduler, rank,
                                         sharded) or last_ckpt
    bar.close()
    summary = {"stage": stage, "steps": step, "final_loss": loss_sum,
               "resumed_from": str(resume_from) if resume_from else None,
               "checkpoint": str(last_ckpt) if last_ckpt else None}
    if step == total_steps:
        vlm.eval()
        weights = full_model_state(vlm) if sharded else None
        if rank == 0:
            summary["model"] = str(vlm.save_pretrained(out_dir / "model", weights))
    return summary
