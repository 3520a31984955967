"""Data-parallel evaluation: each rank takes every world-th item, and the results are gathered
back into the items' own order, so a run on N ranks returns what one process returns.

    rank, world, device = dermvlm.training.distributed()    # torchrun / accelerate launch
    mine = items[rank::world]
    results = gather_in_order([f(item) for item in mine], world)    # every rank: all of them
"""
import torch.distributed as dist


def gather_in_order(mine, world):
    """This rank's results for items[rank::world] -> the results for all items, in order, on
    every rank (a collective; Python objects, tensors included, are pickled)."""
    if world == 1:
        return list(mine)
    parts = [None] * world
    dist.all_gather_object(parts, list(mine))
    out = []
    for i in range(max(len(p) for p in parts)):
        out += [p[i] for p in parts if i < len(p)]
    return out


def barrier(world):
    if world > 1:
        dist.barrier()
