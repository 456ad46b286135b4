"""`viewfusion train` end to end on synthetic shards: files, resume, signals, NaN, torchrun."""

from __future__ import annotations

import math
import signal

import pytest
import torch
from train_utils import (
    assert_same_weights,
    flip_weight_bit,
    load,
    make_shards,
    metrics,
    run_train,
    start_train,
    wait_for,
)

from viewfusion.config import TrainConfig, from_dict
from viewfusion.errors import ViewFusionError
from viewfusion.train import distributed
from viewfusion.train import loop as train
from viewfusion.train import state as trainstate


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.getbasetemp() / "train-shards")


def test_lr_schedule_is_the_official_one():
    tc = TrainConfig()  # the paper: 1e-4, warm-up 2500, x0.16 per 4 M steps

    def official(it):  # bronemos/view-fusion main.py LrScheduler.get_cur_lr
        return 1e-4 * (it / 2500 if it < 2500 else 0.16 ** ((it - 2500) / 4_000_000))

    # The official first step runs at lr 0; ours are one step ahead during the warm-up.
    for it in (0, 1, 1249, 2498):
        assert tc.lr * trainstate.lr_factor(it, tc) == pytest.approx(official(it + 1), rel=1e-12)
    for it in (2499, 2500, 100_000, 710_000, 4_002_500):
        assert tc.lr * trainstate.lr_factor(it, tc) == pytest.approx(official(max(it, 2500)), rel=1e-12)
    assert trainstate.lr_factor(4_002_500, tc) == pytest.approx(0.16)
    official_start = from_dict({"train": {"warmup_offset": 0}}).train  # step 0 at lr 0, as theirs
    for it in (0, 1, 1249, 2499, 2500, 100_000):
        assert tc.lr * trainstate.lr_factor(it, official_start) == pytest.approx(official(it), rel=1e-12)


def test_per_rank_batch_must_divide():
    assert distributed.per_rank_batch(112, 4) == 28
    with pytest.raises(ViewFusionError, match="112 is not divisible by the 3 ranks"):
        distributed.per_rank_batch(112, 3)


@pytest.mark.slow
def test_run_writes_checkpoints_metrics_and_is_idempotent(shards, tmp_path):
    out = tmp_path / "run"
    res = run_train(shards, out, "train.max_steps=4", "train.snapshot_steps=[2]")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last.pt", "step_00000002.pt"]
    final = load(out / "final.pt")
    assert final["step"] == 4 and final["format"] == "viewfusion-checkpoint" and final["world_size"] == 1
    assert final["config"]["train"]["max_steps"] == 4 and final["ema"]["n_averaged"] == 4
    assert load(out / "checkpoints" / "step_00000002.pt")["step"] == 2
    rows = [r for r in metrics(out) if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and 0 <= r["data_wait_frac"] <= 1 and r["samples_per_s"] > 0
               for r in rows)
    tc = from_dict(final["config"]).train
    assert [r["lr"] for r in rows] == pytest.approx([tc.lr * trainstate.lr_factor(i, tc) for i in range(4)])
    assert "step 4/4" in res.stdout  # plain progress lines when not on a terminal
    again = run_train(shards, out, "train.max_steps=4")
    assert again.returncode == 0 and "nothing to do" in again.stdout


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_sigkill_then_restart_is_bit_identical(shards, tmp_path, workers):
    killed = tmp_path / "killed"
    workers_set = f"data.num_workers={workers}"
    proc = start_train(shards, killed, "train.max_steps=1000", workers_set)
    wait_for(killed / "checkpoints" / "last.pt", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    step = load(killed / "checkpoints" / "last.pt")["step"]  # a multiple of checkpoint_every (3)
    total = step + 4  # crosses one more data-segment start (every 3 steps) after the resume
    resumed = run_train(shards, killed, f"train.max_steps={total}", workers_set)
    assert resumed.returncode == 0 and f"at step {step}" in resumed.stdout, resumed.stderr
    straight = run_train(shards, tmp_path / "straight", f"train.max_steps={total}", workers_set)
    assert straight.returncode == 0, straight.stderr
    assert_same_weights(load(killed / "final.pt"), load(tmp_path / "straight" / "final.pt"))


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_resume_inside_a_data_segment_is_bit_identical(shards, tmp_path, workers):
    """A checkpoint at step 3 of a 5-step loader segment: the resumed run replays the segment's
    first 3 batches undecoded, then crosses into the next segment (issue 21)."""
    sets = [f"data.num_workers={workers}", "data.stream_segment=5", "train.checkpoint_every=2"]
    resumed = tmp_path / "resumed"
    assert run_train(shards, resumed, "train.max_steps=3", *sets).returncode == 0
    res = run_train(shards, resumed, "train.max_steps=8", *sets)
    assert res.returncode == 0 and "at step 3" in res.stdout, res.stderr
    straight = run_train(shards, tmp_path / "straight", "train.max_steps=8", *sets)
    assert straight.returncode == 0, straight.stderr
    assert_same_weights(load(resumed / "final.pt"), load(tmp_path / "straight" / "final.pt"))


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_exits_75(shards, tmp_path):
    out = tmp_path / "run"
    proc = start_train(shards, out, "train.max_steps=1000", "train.checkpoint_every=1000")
    wait_for(out / "metrics.jsonl", proc)  # a step is done: the handlers are in place
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == train.PREEMPTED == 75, stderr
    last = load(out / "checkpoints" / "last.pt")
    assert last["step"] >= 1 and "stopped by SIGTERM" in stdout
    assert metrics(out)[-1]["event"] == "checkpoint" and metrics(out)[-1]["step"] == last["step"]
    assert not (out / "final.pt").exists()


@pytest.mark.slow
def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(shards, tmp_path):
    out = tmp_path / "run"
    res = run_train(shards, out, "train.max_steps=20", **{train.FAULT_NAN_ENV: "5"})
    assert res.returncode == 2
    assert "loss became nan at step 5" in res.stderr and "last.pt" in res.stderr
    last = load(out / "checkpoints" / "last.pt")
    assert last["step"] == 3  # written at step 3, untouched since
    assert all(torch.isfinite(v).all() for v in last["model"].values())
    assert not (out / "final.pt").exists()


@pytest.mark.slow
def test_resume_refuses_another_model_and_wrong_shards(shards, tmp_path):
    out = tmp_path / "run"
    assert run_train(shards, out, "train.max_steps=1").returncode == 0
    res = run_train(shards, out, "train.max_steps=2", "model.inner_channel=32")
    assert res.returncode == 2 and "model.inner_channel: 16 -> 32" in res.stderr
    res = run_train(shards, tmp_path / "other", "data.withheld=[car]")
    assert res.returncode == 2 and "expects data.withheld: ['car']" in res.stderr


@pytest.mark.slow
def test_torchrun_two_ranks_stay_in_sync_on_different_samples(shards, tmp_path):
    out = tmp_path / "ddp"
    res = run_train(shards, out, "train.max_steps=4", nproc=2)
    assert res.returncode == 0, res.stderr[-3000:]
    final = load(out / "final.pt")
    assert final["world_size"] == 2 and len(final["rng"]) == 2
    events = [r for r in metrics(out) if r.get("event") == "checkpoint"]
    for event in events:  # every checkpoint: same weights on both ranks, different batches
        r0, r1 = event["ranks"]
        assert r0["weights_sha256"] == r1["weights_sha256"]
        assert len(r0["batch_keys"]) == len(r1["batch_keys"]) == 2  # global batch 4 / 2 ranks
        assert not set(r0["batch_keys"]) & set(r1["batch_keys"])
    bad = run_train(shards, tmp_path / "bad", "train.global_batch_size=3", nproc=2)
    assert bad.returncode != 0 and "3 is not divisible by the 2 ranks" in bad.stderr


@pytest.mark.slow
def test_a_finished_run_is_never_relabelled_with_another_config(shards, tmp_path):
    """A retrain with another config must not wrap the old weights in the new config (it used to
    print "nothing to do" and rewrite final.pt); raising max_steps continues, restart moves aside."""
    import subprocess
    import sys

    from train_utils import env, train_argv

    out = tmp_path / "run"
    assert run_train(shards, out, "train.max_steps=3").returncode == 0
    before = (out / "final.pt").read_bytes()
    res = run_train(shards, out, "train.max_steps=3", "train.lr=0.5")
    assert res.returncode == 2 and "train.lr: 0.001 -> 0.5" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and (out / "final.pt").read_bytes() == before
    resumed = run_train(shards, out, "train.max_steps=5")  # allowed: the budget grows
    assert resumed.returncode == 0 and "at step 3" in resumed.stdout, resumed.stderr
    lowered = run_train(shards, out, "train.max_steps=4")
    assert lowered.returncode == 2 and "below the checkpoint's step 5" in lowered.stderr
    cmd = [sys.executable, "-m", "viewfusion.cli", *train_argv(shards, out, "train.max_steps=2", "train.lr=0.5"),
           "--on-config-change", "restart"]
    fresh = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env(), timeout=600)
    assert fresh.returncode == 0, fresh.stderr
    final = load(out / "final.pt")
    assert final["step"] == 2 and final["config"]["train"]["lr"] == 0.5
    (old,) = (out / "superseded").iterdir()
    assert load(old / "final.pt")["step"] == 5 and (old / "checkpoints" / "last.pt").exists()


def test_resume_changes_allow_only_the_budget_and_cadence():
    from train_utils import TINY

    from viewfusion.configfile import load_config
    from viewfusion.train.rundir import resume_changes

    old = load_config(TINY, ["train.snapshot_steps=[10]"])
    ok = load_config(TINY, ["train.max_steps=9000", "train.log_every=1", "train.snapshot_steps=[10, 20]"])
    assert resume_changes(old, ok, step=15) == []
    assert resume_changes(old, load_config(TINY, ["train.snapshot_steps=[5, 10]"]), step=15) == [
        "train.snapshot_steps adds [5], already passed at step 15"]
    # The checkpoint cadence no longer moves the loader's restarts; the segment length does.
    assert resume_changes(old, load_config(TINY, ["train.checkpoint_every=7"]), step=15) == []
    assert resume_changes(old, load_config(TINY, ["data.stream_segment=7"]), step=15) == [
        "data.stream_segment: 5000 -> 7"]
    assert resume_changes(old, load_config(TINY, ["diffusion.prediction=eps"]), step=15) == [
        "diffusion.prediction: 'v' -> 'eps'"]


@pytest.mark.slow
def test_resume_from_a_checkpoint_missing_a_buffer_is_one_clear_line(shards, tmp_path):
    from viewfusion.model import checkpoint

    out = tmp_path / "run"
    assert run_train(shards, out, "train.max_steps=3", "train.checkpoint_every=1000").returncode == 0
    last = out / "checkpoints" / "last.pt"  # what a rerun resumes from
    ckpt = checkpoint.load(last)
    checkpoint.save(last, {**ckpt, "model": {k: v for k, v in ckpt["model"].items() if k != "gammas"}})
    res = run_train(shards, out, "train.max_steps=4", "train.checkpoint_every=1000")
    assert res.returncode == 2 and "gammas" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


@pytest.mark.slow
def test_resume_from_a_checkpoint_with_flipped_weight_bytes_is_one_clear_line(shards, tmp_path):
    """torch.load checks no CRC: resuming used to train on from the damaged EMA weights."""
    out = tmp_path / "run"
    assert run_train(shards, out, "train.max_steps=3", "train.checkpoint_every=1000").returncode == 0
    last = out / "checkpoints" / "last.pt"
    flip_weight_bit(last, ema=True)
    res = run_train(shards, out, "train.max_steps=4", "train.checkpoint_every=1000")
    assert res.returncode == 2 and f"{last}: the EMA weights do not match the sha256 stamped" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr


@pytest.mark.slow
def test_a_full_disk_while_training_is_one_clear_line(shards, full_disk):
    res = run_train(shards, full_disk / "run", "train.max_steps=3")
    # torch's writer hides the errno ("unexpected pos"): fsutil names the file and the likely cause
    assert res.returncode == 2 and ("no space left" in res.stderr or "full disk" in res.stderr), res.stderr[-2000:]
    assert len(res.stderr.strip().splitlines()) == 1 and not (full_disk / "run" / "final.pt").exists()
