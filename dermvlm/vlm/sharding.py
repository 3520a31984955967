"""FSDP for the VLM (`vlm.parallel=fsdp`): each decoder layer of the language model is its own
shard group (PyTorch `fully_shard`, FSDP2), the rest (embeddings, LM head, image tower,
projector) the root group. Every rank holds 1/world of every weight, LoRA's included, and
gathers a layer only while it computes it; gradients are reduce-scattered (averaged over ranks,
as DDP averages them), so the training loop is the same as under DDP.

Checkpoints hold *full* state, keyed by parameter name (not by rank or by shard): the
trainable weights in the VLM folder and the optimizer state in train_state.pt. So a run saved
at one world size resumes at any other, with or without FSDP, and `merge-export` reads it.
QLoRA (vlm.quantize_4bit) stays the single-GPU path.

    shard_vlm(vlm, mixed_precision="bf16")       # in place, after the weights are loaded
    state = full_model_state(vlm)                # every rank calls it; rank 0 gets tensors
"""
import torch
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict,
                                                     set_optimizer_state_dict)

from dermvlm.errors import DermvlmError


def decoder_layers(vlm):
    """The LM's transformer blocks (Llama / Qwen2 / Gemma style: base.model.layers)."""
    lm = vlm.lm.get_base_model() if hasattr(vlm.lm, "get_base_model") else vlm.lm
    layers = getattr(getattr(lm, "model", None), "layers", None)
    if layers is None:
        raise DermvlmError(f"vlm.parallel=fsdp: {type(lm).__name__} has no model.layers to "
                           "shard; use vlm.parallel=ddp")
    return list(layers)


def shard_vlm(vlm, mixed_precision="no"):
    """Shard `vlm` in place over the default process group; returns it."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    if getattr(vlm.config, "quantize_4bit", False):
        raise DermvlmError("vlm.parallel=fsdp does not shard a 4-bit LM: QLoRA is the "
                           "single-GPU path (set vlm.quantize_4bit=false or vlm.parallel=ddp)")
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
        if mixed_precision == "bf16" else MixedPrecisionPolicy()
    for layer in decoder_layers(vlm):
        fully_shard(layer, mp_policy=policy)
    fully_shard(vlm, mp_policy=policy)
    return vlm


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(vlm):
    """{name: tensor} of the whole VLM on CPU, gathered from the shards; a collective: every
    rank must call it (rank 0 receives the tensors, the others an empty dict)."""
    return get_model_state_dict(vlm, options=_FULL)


def full_optimizer_state(vlm, optimizer):
    """The optimizer's state keyed by parameter name, full (gathered when sharded), on CPU."""
    return get_optimizer_state_dict(vlm, optimizer, options=_FULL)


def load_optimizer_state(vlm, optimizer, state):
    """Load a full_optimizer_state into `optimizer`, at any world size (each rank keeps its
    shard)."""
    set_optimizer_state_dict(vlm, optimizer, state,
                             options=StateDictOptions(full_state_dict=True,
                                                      broadcast_from_rank0=False))
