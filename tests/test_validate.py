"""In-training validation: validation lines and best.pt, DDP agreement with one process, exact
resume with validation on, the best across a resume, and the config keys."""

from __future__ import annotations

import json

import pytest
from train_utils import TINY, assert_same_weights, load, make_shards, metrics, run_train

from viewfusion import cli
from viewfusion.configfile import load_config
from viewfusion.errors import ViewFusionError
from viewfusion.train import validate

VAL = ["train.validate_every=2", "train.validate_targets=3", "train.validate_draws=7", "train.validate_steps=4"]
NUMBERS = ("psnr", "ssim", "heldout_loss", "heldout_loss_se", "heldout_eps_mse", "heldout_loss_bands")


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.getbasetemp() / "train-shards")


def _lines(out) -> list[dict]:
    return [r for r in metrics(out) if r.get("event") == "validation"]


def _validate_cli(capsys, ckpt, shards) -> dict:
    code = cli.main(["validate", "--checkpoint", str(ckpt), "--shards", str(shards), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out.strip().splitlines()[-1])


def test_best_follows_the_metric_direction_and_the_settings():
    cfg = load_config(TINY, VAL)
    s = validate.settings(cfg)
    best, improved = validate.update_best(None, {"psnr": 10.0}, s, 2)
    assert improved and best == {"metric": "psnr", "value": 10.0, "step": 2, "settings": s}
    assert validate.update_best(best, {"psnr": 9.0}, s, 4) == (best, False)
    assert validate.update_best(best, {"psnr": 11.0}, s, 4)[0]["step"] == 4
    assert validate.update_best(best, {"psnr": float("nan")}, s, 4) == (best, False)
    other = {**s, "targets": 5}  # other validation settings: compared afresh
    assert validate.update_best(best, {"psnr": 1.0}, other, 6)[0]["value"] == 1.0
    loss = {**s, "metric": "heldout_loss"}
    best, _ = validate.update_best(None, {"heldout_loss": 0.5}, loss, 2)
    assert validate.update_best(best, {"heldout_loss": 0.6}, loss, 4)[1] is False
    assert validate.update_best(best, {"heldout_loss": 0.4}, loss, 4)[1] is True
    assert validate.resumed_best(best, load_config(TINY, VAL)) is None  # its metric was heldout_loss
    assert validate.resumed_best({**best, "settings": s}, cfg)["value"] == 0.5


def test_validation_keys_are_checked_and_may_change_on_resume():
    from viewfusion.train.rundir import resume_changes

    for bad, message in (("train.validate_every=0", "validate_every must be null"),
                         ("train.validate_metric=lpips",
                          "validate_metric 'lpips' is not one of psnr, ssim, heldout_loss"),
                         ("train.validate_views=24", "validate_views must be null"),
                         ("train.validate_targets=0", "validate_targets must be at least 1")):
        with pytest.raises(ViewFusionError, match=message):
            load_config(TINY, [bad])
    assert load_config(TINY, ["train.validate_every=null"]).train.validate_every is None
    assert resume_changes(load_config(TINY), load_config(TINY, VAL), step=10) == []


@pytest.mark.slow
def test_a_tiny_run_logs_validation_and_keeps_best_pt(shards, tmp_path, capsys):
    out = tmp_path / "run"
    res = run_train(shards, out, "train.max_steps=6", "train.checkpoint_every=1000", *VAL)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = _lines(out)
    assert [r["step"] for r in lines] == [2, 4, 6] and "validation step 2: PSNR" in res.stdout
    for r in lines:
        assert r["targets"] == 3 and r["draws"] == 7 and r["weights"] == "ema" and r["metric"] == "psnr"
        assert 0 < r["psnr"] < 100 and -1 <= r["ssim"] <= 1 and r["heldout_loss"] > 0
        assert r["heldout_loss_name"] == "v_mse" and len(r["heldout_loss_bands"]) == 4
    best_line = max(lines, key=lambda r: r["psnr"])
    assert [r["best"] for r in lines] == [r["psnr"] == max(x["psnr"] for x in lines[: i + 1])
                                          for i, r in enumerate(lines)]
    best = load(out / "checkpoints" / "best.pt")
    assert best["step"] == best_line["step"] and best["best"]["value"] == best_line["psnr"]
    assert best["best"]["settings"]["targets"] == 3 and load(out / "final.pt")["best"] == best["best"]
    written = [r for r in metrics(out) if r.get("event") == "checkpoint" and "checkpoints/best.pt" in r["files"]]
    assert [r["step"] for r in written] == [r["step"] for r in lines if r["best"]]
    # `viewfusion validate` measures a checkpoint as training did
    again = _validate_cli(capsys, out / "checkpoints" / "best.pt", shards)
    assert {k: again[k] for k in NUMBERS} == {k: best_line[k] for k in NUMBERS}


@pytest.mark.slow
def test_two_ranks_log_the_validation_of_one_process(shards, tmp_path, capsys):
    """2 gloo ranks split the 3 targets and 7 draws 2+1 and 4+3; one process on the same weights
    (best.pt of that run) gives the same numbers (PSNR/SSIM summed in another order)."""
    out = tmp_path / "ddp"
    res = run_train(shards, out, "train.max_steps=2", *VAL, nproc=2)
    assert res.returncode == 0, res.stderr[-3000:]
    (line,) = _lines(out)
    assert load(out / "checkpoints" / "best.pt")["world_size"] == 2
    one = _validate_cli(capsys, out / "checkpoints" / "best.pt", shards)
    for key in ("psnr", "ssim"):
        assert one[key] == pytest.approx(line[key], rel=1e-12, abs=1e-12)
    for key in ("heldout_loss", "heldout_loss_se", "heldout_eps_mse", "heldout_loss_bands", "manifest_sha256",
                "draws_sha256"):
        assert one[key] == line[key]  # gathered per draw, summed in draw order


@pytest.mark.slow
def test_exact_resume_holds_with_validation_on(shards, tmp_path):
    """Validation leaves the training alone (weights equal a run without it), and a run stopped
    at step 3 and resumed ends as the uninterrupted one, its best carried across the resume."""
    val = [*VAL, "train.validate_metric=heldout_loss"]
    plain = run_train(shards, tmp_path / "plain", "train.max_steps=7")
    straight = run_train(shards, tmp_path / "straight", "train.max_steps=7", *val)
    first = run_train(shards, tmp_path / "resumed", "train.max_steps=3", *val)
    for res in (plain, straight, first):
        assert res.returncode == 0, res.stderr[-3000:]
    assert load(tmp_path / "resumed" / "final.pt")["best"]["step"] == 2
    resumed = run_train(shards, tmp_path / "resumed", "train.max_steps=7", *val)
    assert resumed.returncode == 0 and "at step 3" in resumed.stdout, resumed.stderr[-3000:]
    final = load(tmp_path / "straight" / "final.pt")
    assert_same_weights(load(tmp_path / "plain" / "final.pt"), final)
    assert_same_weights(load(tmp_path / "resumed" / "final.pt"), final)
    keep = ("step", *NUMBERS, "best", "best_value", "best_step")
    assert ([{k: r[k] for k in keep} for r in _lines(tmp_path / "resumed")]
            == [{k: r[k] for k in keep} for r in _lines(tmp_path / "straight")])
    assert load(tmp_path / "resumed" / "checkpoints" / "best.pt")["best"] == final["best"]
