"""Wall-clock timing for benchmarks, synchronising CUDA so GPU work is counted."""
import time

import torch


def seconds_per_call(fn, steps, device, warmup=1):
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps
