"""Run a training entry point in one process and under torchrun with two gloo processes."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN_TWO = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2"]   # --standalone: torchrun binds its own free port


def run(argv):
    """`argv` in the repository root, one thread per process; the finished process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def run_one_and_two_processes(module_args, out_one, out_two):
    """`python -m ...` once, then `torchrun --nproc_per_node 2`; asserts both succeed."""
    for argv in ([sys.executable, *module_args, "--out", str(out_one)],
                 [*TORCHRUN_TWO, *module_args, "--out", str(out_two)]):
        done = run(argv)
        # each rank's own traceback first (torchrun prefixes it), then the launcher's tail
        worker_lines = [line for line in done.stderr.splitlines() if line.startswith("[rank")]
        assert done.returncode == 0, "\n".join(worker_lines[-60:]) + done.stderr[-1500:]
