"""``fairseq-slt launch``: fairseq's data-parallel training, one process per rank, on one or several machines.

It starts ``--nproc`` fairseq-train processes on this machine with fairseq's own rank options
(--distributed-world-size/-rank/-init-method, --distributed-no-spawn, --device-id). Run it once per
machine with the same --master (rank 0's machine) and --nnodes, and each machine's --node-rank. If
one process fails, the others are stopped (a data-parallel job cannot go on without it); they also
stop when the launcher itself ends, however it ends.
"""
import os
import shlex
import signal
import subprocess
import sys
import time

from ..pruning import Failure, UserError
from ..run.options import CPU_DDP_BACKENDS
from .iterate import _dies_with
from .iterate_options import option_value

RANK_OPTIONS = ("--distributed-world-size", "--distributed-rank", "--distributed-init-method", "--device-id",
                "--distributed-no-spawn", "--distributed-port")


def add_arguments(parser):
    parser.add_argument("--nproc", type=int, required=True, help="processes (GPUs, or CPU processes) on this machine")
    parser.add_argument("--nnodes", type=int, default=1, help="machines taking part")
    parser.add_argument("--node-rank", type=int, default=0, help="this machine's index, 0 .. nnodes-1")
    parser.add_argument("--master", default="127.0.0.1:29500",
                        help="ADDR:PORT of rank 0's machine (the same on every machine)")
    parser.add_argument("--backend", choices=("auto", "nccl", "gloo"), default="auto",
                        help="torch.distributed backend; auto: gloo with --cpu, else nccl")
    parser.add_argument("--train-command", default=f"{sys.executable} -m fairseq_cli.train",
                        help="how to run fairseq-train (default: this Python's)")
    parser.add_argument("train_args", nargs="*", metavar="-- FAIRSEQ_TRAIN_ARGS",
                        help="after --: the data folder and fairseq-train options, the same for every rank")


def commands(args):
    if args.nproc < 1 or args.nnodes < 1 or not 0 <= args.node_rank < args.nnodes:
        raise UserError("--nproc and --nnodes must be >= 1 and --node-rank in 0 .. nnodes-1")
    host, _, port = args.master.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--master must be ADDR:PORT, got {args.master!r}")
    if not args.train_args:
        raise UserError("give the data folder and fairseq-train options after --")
    for arg in args.train_args:
        if arg.split("=")[0] in RANK_OPTIONS:
            raise UserError(f"{arg.split('=')[0]} is set by the launcher for every rank; leave it out")
    cpu = "--cpu" in args.train_args
    ddp = option_value(args.train_args, "--ddp-backend") or "pytorch_ddp"  # fairseq's default
    if cpu and args.nproc * args.nnodes > 1 and ddp not in CPU_DDP_BACKENDS:  # else every rank says so
        raise UserError(f"--ddp-backend {ddp} does not run on CPU with several processes; add --ddp-backend "
                        f"{' or '.join(CPU_DDP_BACKENDS)} to the fairseq-train options")
    backend = args.backend if args.backend != "auto" else ("gloo" if cpu else "nccl")
    world = args.nproc * args.nnodes
    result = []
    for local in range(args.nproc):
        rank = args.node_rank * args.nproc + local
        result.append([*shlex.split(args.train_command), *args.train_args,
                       "--distributed-world-size", str(world), "--distributed-rank", str(rank),
                       "--distributed-init-method", f"tcp://{host}:{port}", "--distributed-backend", backend,
                       "--distributed-no-spawn", "--device-id", str(0 if cpu else local)])
    return result


def main(args):
    planned = commands(args)
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    processes = [subprocess.Popen(command, env=env, preexec_fn=_dies_with(os.getpid())) for command in planned]
    code = 0
    try:
        while any(p.poll() is None for p in processes):
            failed = [p for p in processes if p.poll() not in (None, 0)]
            if failed:
                code = failed[0].returncode
                break
            time.sleep(0.2)
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    code = code or next((p.returncode for p in processes if p.returncode), 0)
    if code:
        raise Failure(f"a rank failed (exit {code}); the other ranks were stopped")
    return 0
