"""The training launcher workflow/scripts/train.sh, without a cluster: stand-ins for torchrun
(a worker that checkpoints on SIGUSR1) and scontrol (records the requeue) show what it starts,
how it turns Slurm's time-limit warning into a checkpoint and a requeue, and what it refuses.
The same launcher on a real Slurm: tests/test_slurm.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from train_utils import TRAIN_SH

FAKE_TORCHRUN = """#!/usr/bin/env bash
# torchrun's shape: a parent that starts the worker as its child and exits 1 if it fails.
echo "torchrun $* OMP=$OMP_NUM_THREADS" >>"$FAKE_LOG"
python3 "$FAKE_WORKER" "$@" &
wait $!
rc=$?
[ "$rc" = 0 ] || exit 1
"""
FAKE_WORKER = """import os, signal, sys, time
# viewfusion train's shape: SIGUSR1 -> checkpoints/last.pt, exit 75; done -> final.pt, exit 0.
out = sys.argv[sys.argv.index("--out") + 1]
stop = []
signal.signal(signal.SIGUSR1, lambda *a: stop.append(1))
os.makedirs(f"{out}/checkpoints", exist_ok=True)
open(f"{out}/started", "w").close()
deadline = time.time() + float(os.environ.get("FAKE_SECONDS", "60"))
while time.time() < deadline:
    if stop:
        open(f"{out}/checkpoints/last.pt", "w").close()
        sys.exit(75)
    time.sleep(0.05)
open(f"{out}/final.pt", "w").close()
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
echo "scontrol $*" >>"$FAKE_LOG"
"""


@pytest.fixture
def launcher(tmp_path):
    """train.sh with stand-ins for torchrun and scontrol on PATH; returns (start, run dir, log)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("torchrun", FAKE_TORCHRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    (tmp_path / "worker.py").write_text(FAKE_WORKER)
    run, log = tmp_path / "run", tmp_path / "calls.log"
    log.touch()

    def start(*options: str, slurm: bool = True, **env: str) -> subprocess.Popen:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CUDA_"))}
        base.update(PATH=f"{bin_dir}{os.pathsep}{base['PATH']}", FAKE_LOG=str(log),
                    FAKE_WORKER=str(tmp_path / "worker.py"), **env)
        if slurm:
            base.update(SLURM_JOB_ID="123", SLURM_JOB_NODELIST="localhost")
        cmd = ["bash", str(TRAIN_SH), "--run-dir", str(run), *options, "--", "--config", "c.yaml", "--out", str(run)]
        return subprocess.Popen(cmd, env=base, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)

    return start, run, log


def _finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str]:
    """Exit status and stderr; then nothing of the launcher's session is left running."""
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return proc.returncode, err


def _wait_until(predicate, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_train_sh_without_slurm_is_torchrun_standalone(launcher):
    start, _, log = launcher
    rc, err = _finish(start("--nodes", "1", "--nproc", "3", "--threads", "6", "--max-minutes", "0",
                            slurm=False, FAKE_SECONDS="0"))
    assert rc == 0, err
    assert log.read_text().split("\n")[0] == (
        "torchrun --standalone --nproc-per-node=3 -m viewfusion.cli train --config c.yaml --out "
        f"{launcher[1]} OMP=2")
    rc, err = _finish(start("--nodes", "2", "--nproc", "1", "--threads", "1", "--max-minutes", "0", slurm=False))
    assert rc == 2 and "training.nodes 2 needs a Slurm allocation" in err


def test_train_sh_turns_the_warning_into_a_checkpoint_and_a_requeue(launcher):
    start, run, log = launcher
    proc = start("--nodes", "1", "--nproc", "1", "--threads", "2", "--max-minutes", "600")
    _wait_until(lambda: (run / "started").exists())
    os.kill(proc.pid, signal.SIGURG)  # what Slurm's --signal=URG@... delivers
    _wait_until(lambda: "scontrol requeue 123" in log.read_text())
    os.killpg(proc.pid, signal.SIGTERM)  # Slurm ends the allocation after the requeue
    proc.wait(timeout=10)
    assert (run / "checkpoints" / "last.pt").exists() and not (run / "final.pt").exists()
    ledger = (run / "checkpoints" / "allocations.tsv").read_text().split("\t")
    assert ledger[0] == "123" and ledger[1] == "0" and ledger[-1] == "stopped\n", ledger
    assert "torchrun --standalone --nproc-per-node=1" in log.read_text()


def test_train_sh_finishes_and_keeps_the_budget(launcher):
    start, run, log = launcher
    rc, err = _finish(start("--nodes", "1", "--nproc", "1", "--threads", "1", "--max-minutes", "1",
                            FAKE_SECONDS="0.2"))
    assert rc == 0 and (run / "final.pt").exists(), err
    assert (run / "checkpoints" / "allocations.tsv").read_text().rstrip().endswith("finished")
    # 60 s of allocations already spent against a 1-minute budget: refuse before starting.
    (run / "final.pt").unlink()
    (run / "checkpoints" / "allocations.tsv").write_text("9\t0\t0\t60\t60\tstopped\n")
    log.write_text("")
    rc, err = _finish(start("--nodes", "1", "--nproc", "1", "--threads", "1", "--max-minutes", "1"))
    assert rc == 75 and "training budget (training.max_hours = 0 h 1 min) is used up" in err, err
    assert "torchrun" not in log.read_text()  # never started


@pytest.mark.slow
def test_train_sh_does_not_requeue_past_the_budget(launcher):
    start, run, log = launcher
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "allocations.tsv").write_text("9\t0\t0\t59\t59\tstopped\n")
    proc = start("--nodes", "1", "--nproc", "1", "--threads", "1", "--max-minutes", "1")
    _wait_until(lambda: (run / "started").exists())
    time.sleep(1.1)
    os.kill(proc.pid, signal.SIGURG)
    rc, err = _finish(proc)
    assert rc == 75 and "not requeueing" in err, err
    assert "scontrol requeue" not in log.read_text()


def test_train_sh_refuses_a_gpu_count_that_is_not_the_process_count(launcher):
    start, _, log = launcher
    rc, err = _finish(start("--nodes", "1", "--nproc", "4", "--threads", "8", "--max-minutes", "0",
                            CUDA_VISIBLE_DEVICES="0,1"))
    assert rc == 2 and "gives 2 GPU(s) per node" in err and "GPUS_PER_NODE" in err, err
    assert "torchrun" not in log.read_text()
