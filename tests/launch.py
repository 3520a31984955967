"""Run a training entry point in one process and with two gloo processes, under torchrun or
`accelerate launch`."""
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN_TWO = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2"]   # --standalone: torchrun binds its own free port


def accelerate_two():
    """`accelerate launch` with two processes on a free port. Its --multi_gpu launcher is
    torchrun's and runs gloo processes on a CPU-only machine; its --cpu mode starts one process
    unless mpirun (Intel MPI / oneCCL) is installed."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
            "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "--main_process_port", str(port)]


def run(argv):
    """`argv` in the repository root, one thread per process; the finished process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def run_one_and_two_processes(module_args, out_one, out_two, launcher=TORCHRUN_TWO):
    """`python -m ...` once, then under `launcher` (torchrun --nproc_per_node 2, or
    accelerate_two()); asserts both succeed."""
    for argv in ([sys.executable, *module_args, "--out", str(out_one)],
                 [*launcher, *module_args, "--out", str(out_two)]):
        done = run(argv)
        # each rank's own traceback first (torchrun prefixes it), then the launcher's tail
        worker_lines = [line for line in done.stderr.splitlines() if line.startswith("[rank")]
        assert done.returncode == 0, "\n".join(worker_lines[-60:]) + done.stderr[-1500:]
