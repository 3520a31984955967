"""Pieces every training loop shares: distributed set-up, the warmup + cosine schedule,
checkpoint discovery, the JSONL metrics log, and the error raised when training must stop."""
import json
import math
import os
import shutil

import torch
import torch.distributed as dist

from dermvlm.errors import DermvlmError


class TrainingError(DermvlmError):
    """Training stopped (e.g. the loss became NaN); the message names the last good state."""


def distributed():
    """(rank, world_size, device) from the environment torchrun and `accelerate launch` set,
    initialising the group (`accelerate launch --cpu` keeps a GPU machine's ranks on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() and not cpu
                          else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)          # "cuda" in library code means this rank's GPU
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank() if world > 1 else 0), world, device


def all_ranks_sum(value, world, device):
    """`value` (a Python number) summed over the ranks; itself when there is one."""
    if world == 1:
        return value
    total = torch.tensor(float(value), dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return type(value)(total.item())


def warmup_cosine(warmup_steps, total_steps):
    """LambdaLR factor: linear warmup, then cosine decay to 0 at total_steps."""
    def factor(step):
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def save_checkpoint(out_dir, step, write_model, train_state, keep=2):
    """Write checkpoints/step_N atomically: `write_model(folder)` fills a temporary folder,
    `train_state` (optimizer, scheduler, step, ...) goes beside it as train_state.pt, and only
    then is it renamed into place and named by checkpoints/latest. A crash at any point leaves
    the previous checkpoint as the one a rerun resumes from. The newest `keep` are kept."""
    root = out_dir / "checkpoints"
    folder = root / f"step_{step:07d}"
    tmp = root / f"step_{step:07d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_model(tmp)
    torch.save(train_state, tmp / "train_state.pt")
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    (root / "latest.tmp").write_text(folder.name)
    os.replace(root / "latest.tmp", root / "latest")
    for old in sorted(p for p in root.glob("step_*") if not p.name.endswith(".tmp"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def latest_checkpoint(out_dir):
    pointer = out_dir / "checkpoints" / "latest"
    if pointer.is_file():
        folder = out_dir / "checkpoints" / pointer.read_text().strip()
        if (folder / "train_state.pt").is_file():
            return folder
    return None


def truncate_metrics(path, start_step):
    """Drop log lines past the step we resume from, so the log is one consistent curve."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines()
             if line.strip() and json.loads(line).get("step", 0) <= start_step]
    path.write_text("".join(line + "\n" for line in lines))


def log_metrics(path, row):
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
