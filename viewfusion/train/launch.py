"""`viewfusion launch train`: submit `viewfusion train` with submitit (Slurm, or this machine).

    viewfusion launch train --config config/experiments/paper.yaml --shards results/shards/all \
        --out results/runs/paper --executor slurm --gpus 4 --time 4320 --partition gpu
    viewfusion launch train --config config/experiments/tiny.yaml --shards results/shards/all \
        --out results/runs/tiny --executor local --gpus 0 --time 60 --wait

For people who do not use Snakemake. One task per GPU (one task on CPU); submitit exports the
ranks and the tasks run exactly what torchrun would run. The job is a submitit `Checkpointable`:
--signal-delay seconds before the time limit (or at preemption) submitit sends SIGUSR2, training
finishes its step and writes checkpoints/last.pt, then submitit requeues the same job (at most
--max-requeues time-outs), which resumes from last.pt. Logs: RUN_DIR/submitit/.

Exit status: 0 once submitted (with --wait: once training reached its step budget).
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

import submitit

from viewfusion.configfile import load_config
from viewfusion.errors import ViewFusionError
from viewfusion.train import loop as train


class TrainJob(submitit.helpers.Checkpointable):
    """What every task of the job runs; requeued with the same arguments after a time-out."""

    def __init__(self, train_argv: list[str]) -> None:
        self.train_argv = list(train_argv)

    def __call__(self) -> int:
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:  # RANK, WORLD_SIZE, MASTER_ADDR/PORT for torch.distributed
            # Every task keeps all GPUs visible and takes cuda:LOCAL_RANK, as under torchrun.
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        parser = argparse.ArgumentParser(prog="viewfusion train")
        train.add_arguments(parser)
        args = parser.parse_args(self.train_argv)
        outcome = train.train(load_config(args.config, args.set), shards=args.shards,
                              out=args.out, device=args.device)
        if outcome.signal == env._usr_sig():
            # The checkpoint is on disk and submitit's handler is back in place: hand it the
            # signal, so that it calls self.checkpoint() and requeues this job.
            signal.raise_signal(outcome.signal)
        if not outcome.finished:
            raise ViewFusionError(f"training stopped by signal {outcome.signal} at step "
                                  f"{outcome.step}; resubmit to resume from {args.out}")
        return outcome.step


def add_arguments(parser: argparse.ArgumentParser) -> None:
    train.add_arguments(parser)
    parser.add_argument("--executor", choices=["slurm", "local"], default="slurm")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs per node (one task each); 0: CPU")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--time", type=int, default=60, help="time limit per job, minutes")
    parser.add_argument("--partition", default=None, help="Slurm partition")
    parser.add_argument("--cpus-per-task", type=int, default=8)
    parser.add_argument("--mem-gb", type=int, default=None, help="memory per node (Slurm)")
    parser.add_argument("--signal-delay", type=int, default=120,
                        help="seconds before the time limit at which training is told to stop")
    parser.add_argument("--max-requeues", type=int, default=3, help="time-outs tolerated")
    parser.add_argument("--log-dir", type=Path, default=None, help="default: RUN_DIR/submitit")
    parser.add_argument("--wait", action="store_true", help="block until the job finishes")


def train_argv(args: argparse.Namespace) -> list[str]:
    argv = ["--config", str(args.config), "--shards", str(args.shards), "--out", str(args.out),
            "--device", args.device]
    for override in args.set:
        argv += ["--set", override]
    return argv


def make_executor(args: argparse.Namespace, name: str) -> submitit.Executor:
    if args.gpus < 0 or args.nodes < 1 or args.time < 1:
        raise ViewFusionError("--gpus must be >= 0, --nodes and --time >= 1")
    folder = args.log_dir or args.out / "submitit"
    tasks = max(1, args.gpus)
    if args.executor == "local":
        if args.nodes != 1:
            raise ViewFusionError("--executor local runs on this machine: --nodes must be 1")
        executor = submitit.LocalExecutor(folder, max_num_timeout=args.max_requeues)
        executor.update_parameters(timeout_min=args.time, tasks_per_node=tasks,
                                   gpus_per_node=args.gpus, signal_delay_s=args.signal_delay)
        return executor
    executor = submitit.AutoExecutor(folder, cluster="slurm", slurm_max_num_timeout=args.max_requeues)
    params = dict(name=name, timeout_min=args.time, nodes=args.nodes, tasks_per_node=tasks,
                  gpus_per_node=args.gpus, cpus_per_task=args.cpus_per_task, mem_gb=args.mem_gb,
                  slurm_partition=args.partition, slurm_signal_delay_s=args.signal_delay)
    executor.update_parameters(**{k: v for k, v in params.items() if v})  # unset: cluster default
    return executor


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.set)  # fail here, not in the queue, on a bad config
    executor = make_executor(args, name=f"viewfusion-{cfg.name}")
    job = executor.submit(TrainJob(train_argv(args)))
    print(f"submitted job {job.job_id} ({args.executor}): {cfg.name} -> {args.out}; "
          f"logs in {job.paths.folder}", flush=True)
    if args.wait:
        step = job.result()
        print(f"job {job.job_id} finished at step {step}")
    return 0
