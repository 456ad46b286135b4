"""The submitit launcher: a simulated time limit requeues the job, which resumes and finishes."""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

import pytest
from train_utils import SMALL, TINY, load, make_shards, metrics, wait_for

from viewfusion.train import launch


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.getbasetemp() / "train-shards")


def children(pid: int) -> list[int]:
    """The task processes of submitit's local controller (Linux /proc)."""
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def launch_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    launch.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_slurm_job_asks_for_gpus_signal_and_partition(tmp_path, monkeypatch):
    import submitit

    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", staticmethod(lambda: 1))  # no srun here
    args = launch_args("--config", str(TINY), "--shards", "s", "--out", str(tmp_path / "run"),
                       "--executor", "slurm", "--gpus", "4", "--time", "600", "--partition", "gpu")
    executor = launch.make_executor(args, name="viewfusion-tiny")
    text = executor._executor._make_submission_file_text("CMD", "uid")
    for line in ("--gpus-per-node=4", "--ntasks-per-node=4", "--partition=gpu", "--time=600",
                 "--signal=USR2@120"):
        assert line in text
    assert executor._executor.max_num_timeout == 3


@pytest.mark.slow
def test_local_job_requeues_at_a_time_limit_and_finishes(shards, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "run"
    argv = ["--config", str(TINY), "--shards", str(shards), "--out", str(out), "--device", "cpu"]
    for s in [*SMALL, "train.max_steps=20", "train.checkpoint_every=100"]:
        argv += ["--set", s]
    # --time 5: submitit counts any signal in a job shorter than 50 min as a time-out
    args = launch_args(*argv, "--executor", "local", "--gpus", "0", "--time", "5")
    executor = launch.make_executor(args, name="viewfusion-test")
    job = executor.submit(launch.TrainJob(launch.train_argv(args)))
    wait_for(out / "metrics.jsonl", timeout=300)  # training runs: its signal handlers are set
    for task in children(job._process.pid):  # what the controller does before the time limit
        os.kill(task, signal.SIGUSR2)
    assert job.result() == 20  # waits across the requeue
    rows = metrics(out)
    stops = [r for r in rows if r.get("event") == "checkpoint" and r["files"] == ["checkpoints/last.pt"]]
    assert len(stops) == 1 and 1 <= stops[0]["step"] < 20  # the time-limit checkpoint
    steps = [r["step"] for r in rows if "loss" in r]
    assert steps == list(range(1, 21))  # every step once: resumed where it stopped
    assert load(out / "final.pt")["step"] == 20
    log = "".join(p.read_text() for p in (out / "submitit").glob("*_log.out"))
    assert "this job is timed-out" in log and "Requeued job" in log
    assert log.count("Starting with JobEnvironment") == 2  # the first run and the requeued one
