"""Memory per rank of VLM stage-2 training (LoRA + projector) with the language model
replicated (vlm.parallel=ddp) and sharded (vlm.parallel=fsdp), side by side in one run.

    python -m benchmarks.fsdp_memory                         # 2 gloo ranks on CPU
    python -m benchmarks.fsdp_memory --nproc 4 --steps 5     # more ranks (GPUs when present)

Each configuration runs under torchrun on the embedded default's VLM (SmolLM2-135M and LoRA
r 8) with a synthetic batch, and reports per rank: the bytes of the parameters the rank holds
(its shards under FSDP), of its optimizer state, and its peak memory while training (resident
memory on CPU, its high-water mark reset after the model is set up; CUDA memory on GPU); then
FSDP / DDP as a ratio. Resident memory includes the Python and torch runtime, which no
sharding removes. Every rank loads the whole LM before sharding it, so the peak at load time
(not measured here) is a replica's.
"""
import argparse
import ctypes
import gc
import json
import subprocess
import sys
from pathlib import Path

import torch


def local_bytes(tensors):
    """Bytes the rank holds of these tensors (a DTensor's local shard only)."""
    total = 0
    for t in tensors:
        t = t.to_local() if hasattr(t, "to_local") else t
        total += t.numel() * t.element_size()
    return total


def resident_peak(reset=False):
    """Linux: this process's resident high-water mark in bytes (VmHWM); `reset` restarts it
    from the current resident size (clear_refs 5) and returns None."""
    if reset:
        Path("/proc/self/clear_refs").write_text("5")
        return None
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024


def worker(args):
    from dermvlm import embedded
    from dermvlm.config import get_config
    from dermvlm.training import distributed
    from dermvlm.vlm.sharding import shard_vlm
    from dermvlm.vlm.train import prepare_vlm
    rank, world, device = distributed()
    config = get_config("tiny", [f"vlm.parallel={args.parallel}"])
    vlm = prepare_vlm(config, stage=2, init=str(embedded.vlm_folder()), device=device)
    vlm.lm.train()
    if args.parallel == "fsdp":
        model = shard_vlm(vlm)
    else:
        model = torch.nn.parallel.DistributedDataParallel(vlm, find_unused_parameters=True)
    trainable = [p for p in vlm.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    n_image = vlm.num_image_tokens
    ids = torch.randint(0, 1000, (args.batch, args.length), device=device)
    ids[:, :n_image] = vlm.image_token_id
    pixels = torch.randn(args.batch, 3, vlm.vision.image_size, vlm.vision.image_size,
                         device=device)
    labels = ids.clone()
    labels[:, :n_image] = -100
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:                       # hand what set-up freed back to the OS, then start the peak
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        resident_peak(reset=True)
    for _ in range(args.steps):
        optimizer.zero_grad(set_to_none=True)
        model(input_ids=ids, pixel_values=pixels, labels=labels).loss.backward()
        optimizer.step()
    state = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else \
        resident_peak()
    print("RESULT " + json.dumps({
        "rank": rank, "parallel": args.parallel, "device": device.type,
        "parameter_bytes": local_bytes(vlm.parameters()),
        "optimizer_bytes": local_bytes(state), "training_peak_bytes": peak}), flush=True)


def run(args, parallel):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", str(args.nproc), "-m", "benchmarks.fsdp_memory",
               "--worker", "--parallel", parallel, "--steps", str(args.steps),
               "--batch", str(args.batch), "--length", str(args.length)]
    done = subprocess.run(command, capture_output=True, text=True)
    rows = [json.loads(line.split("RESULT ", 1)[1]) for line in done.stdout.splitlines()
            if "RESULT " in line]
    if done.returncode != 0 or not rows:
        sys.exit(f"{parallel} failed:\n{done.stderr[-3000:]}")
    return sorted(rows, key=lambda r: r["rank"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2, help="sequences per rank")
    parser.add_argument("--length", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--parallel", default="ddp", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    results = {p: run(args, p) for p in ("ddp", "fsdp")}
    mib = 2 ** 20
    print(f"{args.nproc} ranks, {results['ddp'][0]['device']}, batch {args.batch} x "
          f"{args.length} tokens per rank, {args.steps} steps")
    print(f"{'per rank (rank 0), MiB':28s} {'ddp':>10s} {'fsdp':>10s} {'fsdp/ddp':>9s}")
    for key in ("parameter_bytes", "optimizer_bytes", "training_peak_bytes"):
        a, b = results["ddp"][0][key], results["fsdp"][0][key]
        print(f"{key:28s} {a / mib:10.1f} {b / mib:10.1f} {b / a:9.2f}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
