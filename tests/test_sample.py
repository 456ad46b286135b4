"""`viewfusion sample`: chunking and batch size never change the PNGs, a killed chunk resumes
without redoing or losing items, and the completion marker appears only when a chunk is done."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sample_utils import packed_images
from train_utils import flip_weight_bit, save_random_model

from viewfusion.data.manifest import make_manifest
from viewfusion.evaluate.groundtruth import write_ground_truth
from viewfusion.evaluate.sample import chunk_items, sample_chunk
from viewfusion.evaluate.samplestore import Pack, write_pack
from viewfusion.fsutil import atomic_write_json
from viewfusion.model.samplers import SamplerSpec

REPO = Path(__file__).resolve().parents[1]
SPEC = SamplerSpec("ddim", 4)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    # A small random-weight model is enough: determinism does not depend on training.
    return save_random_model(tmp_path_factory.mktemp("ckpt") / "model.pt", step=7)


@pytest.fixture(scope="module")
def manifest(synth_shards, tmp_path_factory) -> Path:
    """Mixed view counts in one manifest, so batches mix them."""
    items = []
    for views in (1, 3):
        items += make_manifest(synth_shards, split="test", view_count=views, seed=0, targets_per_object=1)["items"]
    path = tmp_path_factory.mktemp("manifest") / "mixed.json"
    atomic_write_json(path, {"split": "test", "seed": 0, "view_count": None, "source": "random", "items": items})
    write_ground_truth(path, synth_shards)  # beside it, where metrics looks by default
    return path


def _nothing_written(out: Path) -> bool:
    return not list(out.glob("chunks/*.tar")) and not list(out.glob("pending/*/*"))


def test_chunk_items_partition_the_manifest():
    items = [{"item": str(k)} for k in range(10)]
    parts = [chunk_items(items, i, 3) for i in (1, 2, 3)]
    assert [len(p) for p in parts] == [3, 4, 3]
    assert sum(parts, []) == items


@pytest.mark.slow
def test_chunking_and_batch_size_give_identical_pngs(ckpt, manifest, synth_shards, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    sample_chunk(checkpoint=ckpt, manifest=manifest, shards=synth_shards, out=whole, chunk="1/1",
                 spec=SPEC, batch_size=16, device="cpu")
    for i in (1, 2, 3):
        sample_chunk(checkpoint=ckpt, manifest=manifest, shards=synth_shards, out=split, chunk=f"{i}/3",
                     spec=SPEC, batch_size=1, device="cpu")
    a, b = packed_images(whole), packed_images(split)
    assert len(a) == len(json.loads(manifest.read_text())["items"]) == 10
    assert a == b
    marker = json.loads((split / "chunks/2-of-3.json").read_text())
    assert marker["checkpoint_step"] == 7 and marker["steps"] == 4 and marker["seconds_per_target"] > 0
    assert marker["row_batch"] == 8  # the CPU default: images depend on it, so it is recorded
    assert marker["max_train_views"] == 3  # the tiny config's data.max_views: tables mark more as extrapolation
    assert sorted(p.name for p in (split / "chunks").glob("*-of-3.json")) == ["1-of-3.json", "2-of-3.json",
                                                                              "3-of-3.json"]


@pytest.mark.slow
def test_killed_chunk_resumes_without_redoing_or_losing(ckpt, manifest, synth_shards, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "viewfusion.cli", "sample", "--checkpoint", str(ckpt), "--manifest", str(manifest),
           "--shards", str(synth_shards), "--out", str(out), "--chunk", "1/1", "--sampler", "ddim",
           "--steps", "40", "--batch-size", "1", "--device", "cpu"]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline, pending = time.time() + 300, out / "pending" / "1-of-1"
    while len(list(pending.glob("*.png"))) < 3 and time.time() < deadline:
        time.sleep(0.2)
    proc.kill()
    proc.wait()
    first = {p.name: p.read_bytes() for p in pending.glob("*.png")}
    assert 3 <= len(first) < 10, "the kill should land half-way"
    assert not (out / "chunks/1-of-1.json").exists(), "a killed chunk must not look complete"
    assert not list(out.glob("chunks/*.tar")), "a killed chunk has no pack"
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True)
    after = packed_images(out)
    assert len(after) == 10 and (out / "chunks/1-of-1.json").exists()
    assert all(after[name] == png for name, png in first.items())
    # The progress counts the targets generated under this fingerprint across both runs: a
    # redone item would count twice (the kill may land between an image and its count: <= 10).
    assert json.loads((out / "chunks/1-of-1.progress.json").read_text())["targets"] <= 10, "finished items were redone"
    assert not pending.exists(), "the pending items are packed and removed"
    assert not list(out.rglob(".*.tmp-*")), "half-written files of the killed run stay behind"


@pytest.mark.slow
def test_a_run_beside_one_that_completes_the_chunk_finishes_and_leaves_nothing_pending(ckpt, manifest, synth_shards,
                                                                                      tmp_path):
    """Run B of a chunk is paused half-way while run A completes the chunk, then goes on. A used to
    delete B's pending files (a live writer's temporary file included) and B then failed, its
    later items left in pending/ for good; now B packs from A's pack and the chunk's pending
    files are swept once it is complete."""
    out, pending = tmp_path / "both", tmp_path / "both" / "pending" / "1-of-1"
    cmd = [sys.executable, "-m", "viewfusion.cli", "sample", "--checkpoint", str(ckpt), "--manifest", str(manifest),
           "--shards", str(synth_shards), "--out", str(out), "--chunk", "1/1", "--sampler", "ddim",
           "--steps", "10", "--batch-size", "1", "--device", "cpu"]
    run_b = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while len(list(pending.glob("*.png"))) < 2 and time.time() < deadline:
        time.sleep(0.02)
    run_b.send_signal(signal.SIGSTOP)
    try:
        assert len(list(pending.glob("*.png"))) < 10, "B should be paused half-way"
        sample_chunk(checkpoint=ckpt, manifest=manifest, shards=synth_shards, out=out, chunk="1/1",
                     spec=SamplerSpec("ddim", 10), device="cpu")
        by_a = packed_images(out)
        assert len(by_a) == 10 and not list(pending.glob("*.png")), "A's completion sweeps the packed items"
    finally:
        run_b.send_signal(signal.SIGCONT)
    _, err = run_b.communicate(timeout=300)
    assert run_b.returncode == 0, err
    assert packed_images(out) == by_a and (out / "chunks/1-of-1.json").exists()
    assert not pending.exists(), f"left pending: {sorted(p.name for p in pending.iterdir())}"
    assert not list(out.rglob(".*.tmp-*"))


def test_bad_chunk_and_missing_checkpoint_are_clear_errors(manifest, synth_shards, tmp_path):
    from viewfusion.cli import main

    base = ["sample", "--manifest", str(manifest), "--shards", str(synth_shards), "--out", str(tmp_path / "o")]
    assert main([*base, "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert main([*base, "--checkpoint", str(tmp_path / "nope.pt"), "--chunk", "4/3"]) == 2
    assert not (tmp_path / "o" / "chunks").exists()


def test_nearest_baseline_copies_the_closest_view_across_the_wrap(ckpt, synth_shards, tmp_path):
    """The copy baseline picks by circular azimuth distance: view 1 is 2 steps from view 23,
    view 20 is 3; ties go to the first listed view."""
    from viewfusion.data.reader import load_objects

    objects = load_objects(synth_shards, "test")
    key = sorted(objects)[0]
    cases = [(23, [20, 1]), (6, [9, 3]), (12, [0, 13])]  # -> 1, 9 (tie: first), 13
    items = [{"item": f"{key}_t{t}_v{len(c)}_{k}", "key": key, "target_view": t, "cond_views": c, "seed": k}
             for k, (t, c) in enumerate(cases)]
    manifest = tmp_path / "m.json"
    atomic_write_json(manifest, {"split": "test", "seed": 0, "view_count": None, "source": "random", "items": items})
    out = tmp_path / "nearest"
    sample_chunk(checkpoint=ckpt, manifest=manifest, shards=synth_shards, out=out,
                 spec=SamplerSpec("nearest", None), device="cpu")
    images, pngs = objects[key].images, packed_images(out)
    for it, view in zip(items, (1, 9, 13)):
        png = torch.from_numpy(np.array(Image.open(io.BytesIO(pngs[f"{it['item']}.png"])))).permute(2, 0, 1)
        assert torch.equal(png, (images[view] * 255).round().to(torch.uint8))
    marker = json.loads((out / "chunks/1-of-1.json").read_text())
    assert marker["sampler"] == "nearest" and marker["steps"] == 0 and marker["checkpoint_step"] == 7
    assert marker["unet_evals_per_target"] == 0 and marker["max_train_views"] == 3


# ---------------------------------------------------------------- provenance (issue 16)

def _other_weights(model):
    for p in model.parameters():
        p.add_(0.05)


@pytest.mark.slow
def test_resampling_a_folder_with_other_settings_never_keeps_old_images(ckpt, manifest, synth_shards, tmp_path):
    """Sampling checkpoint A, then B (same step, other weights) or other --steps into one folder
    regenerates every image: the folder ends byte-identical to a fresh folder of the new settings."""
    other = save_random_model(tmp_path / "other.pt", step=7, edit=_other_weights)
    shared, fresh = tmp_path / "shared", tmp_path / "fresh"
    sample_chunk(checkpoint=ckpt, manifest=manifest, shards=synth_shards, out=shared, spec=SPEC, device="cpu")
    old = packed_images(shared)
    for out in (shared, fresh):
        sample_chunk(checkpoint=other, manifest=manifest, shards=synth_shards, out=out, spec=SPEC, device="cpu")
    assert packed_images(shared) == packed_images(fresh)
    assert all(packed_images(shared)[name] != png for name, png in old.items())
    marker = json.loads((shared / "chunks/1-of-1.json").read_text())
    fresh_marker = json.loads((fresh / "chunks/1-of-1.json").read_text())
    assert (marker["fingerprint"] == fresh_marker["fingerprint"]
            and marker["weights_sha256"] == fresh_marker["weights_sha256"])
    # the config as stored in the checkpoint: a code version adding a key does not change it
    from viewfusion.fsutil import sha256_json
    from viewfusion.model.checkpoint import load

    assert marker["config_sha256"] == sha256_json(load(other)["config"])
    sample_chunk(checkpoint=other, manifest=manifest, shards=synth_shards, out=shared, spec=SamplerSpec("ddim", 3),
                 device="cpu")
    assert all(packed_images(shared)[name] != png for name, png in packed_images(fresh).items())


@pytest.mark.slow
def test_another_spacing_is_another_fingerprint_and_the_default_keeps_the_old_one(ckpt, manifest, synth_shards,
                                                                                 tmp_path):
    """The same sampler, steps and weights on another grid of timesteps makes other images: they
    are regenerated, never relabelled; naming the default spacing changes nothing."""
    out = tmp_path / "s"
    sample_chunk(checkpoint=ckpt, manifest=manifest, shards=synth_shards, out=out, spec=SamplerSpec("ddim", 3, 1.0),
                 device="cpu")
    default = json.loads((out / "chunks/1-of-1.json").read_text())
    assert default["spacing"] == "linspace" and "spacing" not in default["settings"]
    old = packed_images(out)
    sample_chunk(checkpoint=ckpt, manifest=manifest, shards=synth_shards, out=out,
                 spec=SamplerSpec("ddim", 3, 1.0, "lambda"), device="cpu")
    marker = json.loads((out / "chunks/1-of-1.json").read_text())
    assert marker["spacing"] == "lambda" and marker["fingerprint"] != default["fingerprint"]
    assert all(packed_images(out)[name] != png for name, png in old.items())
    sample_chunk(checkpoint=ckpt, manifest=manifest, shards=synth_shards, out=tmp_path / "d",
                 spec=SamplerSpec("ddim", 3, 1.0, "linspace"), device="cpu")
    assert json.loads((tmp_path / "d/chunks/1-of-1.json").read_text())["fingerprint"] == default["fingerprint"]
    assert packed_images(tmp_path / "d") == old


@pytest.mark.slow
def test_metrics_refuses_an_image_made_by_other_settings(ckpt, manifest, synth_shards, tmp_path):
    from viewfusion.errors import ViewFusionError
    from viewfusion.evaluate.metrics import compute_metrics

    a, b = tmp_path / "a", tmp_path / "b"
    sample_chunk(checkpoint=ckpt, manifest=manifest, shards=synth_shards, out=a, spec=SPEC, device="cpu")
    sample_chunk(checkpoint=ckpt, manifest=manifest, shards=synth_shards, out=b, spec=SamplerSpec("ddim", 3),
                 device="cpu")
    truth = write_ground_truth(manifest, synth_shards, tmp_path / "gt.tar")
    frame = compute_metrics(generated=a, manifest=manifest, ground_truth=truth, lpips_net=None)
    marker = json.loads((a / "chunks/1-of-1.json").read_text())
    assert (set(frame["weights_sha256"]) == {marker["weights_sha256"]}
            and set(frame["fingerprint"]) == {marker["fingerprint"]})
    good, old = packed_images(a), packed_images(b)
    name = min(good)
    write_pack(a / "chunks/1-of-1.tar", {**good, name: old[name]}.items())  # an old image under the new label
    with pytest.raises(ViewFusionError, match="made by other settings"):
        compute_metrics(generated=a, manifest=manifest, ground_truth=truth, lpips_net=None)
    buffer = io.BytesIO()
    Image.open(io.BytesIO(old[name])).save(buffer, format="PNG")  # same pixels, no fingerprint
    write_pack(a / "chunks/1-of-1.tar", {**good, name: buffer.getvalue()}.items())
    with pytest.raises(ViewFusionError, match="carries no fingerprint"):
        compute_metrics(generated=a, manifest=manifest, ground_truth=truth, lpips_net=None)


def _write_items(path: Path, items: list[dict]) -> Path:
    atomic_write_json(path, {"split": "test", "seed": 0, "view_count": None, "source": "random", "items": items})
    return path


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/escaped-abs", "a/b"])
def test_manifest_item_names_cannot_leave_out(name, ckpt, manifest, synth_shards, tmp_path):
    from viewfusion.cli import main

    item = {**json.loads(manifest.read_text())["items"][0], "item": name}
    bad = _write_items(tmp_path / "bad.json", [item])
    out = tmp_path / "deep" / "er" / "out"
    assert main(["sample", "--checkpoint", str(ckpt), "--manifest", str(bad), "--shards", str(synth_shards),
                 "--out", str(out), "--steps", "2", "--save-weights", "--device", "cpu"]) == 2
    assert not list(tmp_path.rglob("*escaped*")) and not Path("/tmp/escaped-abs.png").exists()


def test_nan_weights_and_nan_eta_are_refused_not_written_black(manifest, synth_shards, tmp_path, capsys):
    from viewfusion.cli import main

    nan = save_random_model(tmp_path / "nan.pt", step=1, edit=lambda m: next(m.parameters()).fill_(float("nan")))
    base = ["sample", "--manifest", str(manifest), "--shards", str(synth_shards), "--device", "cpu", "--steps", "2"]
    assert main([*base, "--checkpoint", str(nan), "--out", str(tmp_path / "n")]) == 2
    assert "NaN" in capsys.readouterr().err
    assert not (tmp_path / "n" / "chunks" / "1-of-1.json").exists() and _nothing_written(tmp_path / "n")


@pytest.mark.parametrize("flags", [["--steps", "0"], ["--steps", "-5"], ["--steps", "5000"], ["--batch-size", "0"],
                                   ["--eta", "-1"], ["--eta", "nan"], ["--eta", "2"], ["--weights-every", "0"],
                                   ["--row-batch", "0"], ["--device", "cuda:7"], ["--device", "tpu"],
                                   ["--spacing", "lambda", "--sampler", "ddpm"],
                                   ["--spacing", "karras", "--sampler", "nearest"]])
def test_bad_sampler_flags_are_one_line_errors(flags, ckpt, manifest, synth_shards, tmp_path, capsys):
    from viewfusion.cli import main

    out = tmp_path / "o"
    assert main(["sample", "--checkpoint", str(ckpt), "--manifest", str(manifest), "--shards", str(synth_shards),
                 "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and flags[0] in err, err
    assert _nothing_written(out)


def test_a_checkpoint_whose_config_does_not_fit_its_weights_is_a_clear_error(manifest, synth_shards, tmp_path, capsys):
    from viewfusion.cli import main
    from viewfusion.model import checkpoint

    good = checkpoint.load(save_random_model(tmp_path / "good.pt", step=1))
    broken = {**good, "config": {**good["config"], "model": {**good["config"]["model"], "inner_channel": 32}}}
    checkpoint.save(tmp_path / "broken.pt", broken)
    no_buffer = {**good, "model": {k: v for k, v in good["model"].items() if k != "gammas"}}
    checkpoint.save(tmp_path / "nobuf.pt", no_buffer)
    for name in ("broken.pt", "nobuf.pt"):
        assert main(["sample", "--checkpoint", str(tmp_path / name), "--manifest", str(manifest), "--shards",
                     str(synth_shards), "--out", str(tmp_path / "o"), "--steps", "2", "--device", "cpu"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and name in err, err


def test_a_checkpoint_with_flipped_weight_bytes_is_refused(manifest, synth_shards, tmp_path, capsys):
    """torch.load checks no CRC: the damaged weights used to sample (and be scored) silently."""
    from viewfusion.cli import main

    damaged = save_random_model(tmp_path / "damaged.pt", step=1)
    flip_weight_bit(damaged)
    m = ["--manifest", str(manifest)]
    for command in (["sample", *m], ["sample", "--sampler", "nearest", *m], ["sample-figures"], ["heldout"],
                    ["validate"]):
        out = tmp_path / command[0]
        assert main([*command, "--checkpoint", str(damaged), "--shards", str(synth_shards), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"{damaged}: the model weights do not match" in err, (command, err)
        assert _nothing_written(out) and _nothing_written(out / "weights")  # sample-figures samples there


@pytest.mark.slow
def test_a_full_disk_is_one_clear_line(ckpt, manifest, synth_shards, full_disk, capsys):
    from viewfusion.cli import main

    pad = full_disk / "pad"
    with open(pad, "wb") as fh:  # leave ~20 KiB: a few PNGs fit, the chunk does not
        fh.write(b"0" * (236 * 1024))
    assert main(["sample", "--checkpoint", str(ckpt), "--manifest", str(manifest), "--shards", str(synth_shards),
                 "--out", str(full_disk / "out"), "--steps", "2", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no space left" in err, err
    assert not (full_disk / "out" / "chunks" / "1-of-1.json").exists()


@pytest.mark.slow
def test_few_step_solvers_sample_and_record_steps_and_unet_calls(ckpt, manifest, synth_shards, tmp_path, capsys):
    from viewfusion.cli import main

    views = sum(len(it["cond_views"]) for it in json.loads(manifest.read_text())["items"])
    for name, calls in (("dpmpp-2m", 3), ("heun", 5)):  # heun: 2 x 3 - 1 calls
        out = tmp_path / name
        sample_chunk(checkpoint=ckpt, manifest=manifest, shards=synth_shards, out=out,
                     spec=SamplerSpec(name, 3), device="cpu")
        marker = json.loads((out / "chunks/1-of-1.json").read_text())
        assert marker["sampler"] == name and marker["steps"] == 3
        assert marker["unet_evals_per_target"] == pytest.approx(calls * views / 10)
        assert len(packed_images(out)) == 10
    assert main(["sample", "--checkpoint", str(ckpt), "--manifest", str(manifest), "--shards", str(synth_shards),
                 "--out", str(tmp_path / "e"), "--sampler", "euler", "--eta", "0.5"]) == 2
    assert "eta" in capsys.readouterr().err


@pytest.mark.slow
def test_markers_of_other_settings_are_dropped_when_a_folder_is_resampled(ckpt, manifest, synth_shards, tmp_path):
    """Two chunks of one setting, then the folder resampled as one chunk of another: the old
    2-chunk markers would mark items complete under the old label; they go, metrics reads the new."""
    from viewfusion.evaluate.metrics import compute_metrics

    out = tmp_path / "s"
    for i in (1, 2):
        sample_chunk(checkpoint=ckpt, manifest=manifest, shards=synth_shards, out=out, chunk=f"{i}/2", spec=SPEC,
                     device="cpu")
    sample_chunk(checkpoint=ckpt, manifest=manifest, shards=synth_shards, out=out, chunk="1/1",
                 spec=SamplerSpec("ddim", 3), device="cpu")
    assert sorted(p.name for p in (out / "chunks").glob("*-of-*.json") if "progress" not in p.name) == ["1-of-1.json"]
    frame = compute_metrics(generated=out, manifest=manifest, lpips_net=None)
    assert set(frame["steps"]) == {3}


def test_sampling_angles_are_the_training_loaders_bit_for_bit():
    """The model must see at sampling the angle values it was trained on (data.loader): the
    float32 product put 6 of the 24 views one ulp off before."""
    from viewfusion.data.loader import relative_angle
    from viewfusion.data.nmr import view_angle
    from viewfusion.evaluate.targets import target_angles

    items = [{"target_view": t, "cond_views": [(5 * t + 3) % 24, 1]} for t in range(24)]
    absolute = target_angles(items, relative=False)
    relative = target_angles(items, relative=True)
    assert absolute.dtype == relative.dtype == torch.float32
    assert absolute.tolist() == [np.float32(view_angle(t)) for t in range(24)]
    assert relative.tolist() == [np.float32(relative_angle(it["target_view"], it["cond_views"][0])) for it in items]


# ---------------------------------------------------------------- packed storage (issue 17)

@pytest.mark.slow
def test_a_chunk_is_one_pack_and_a_new_chunking_reuses_every_image(ckpt, manifest, synth_shards, tmp_path):
    out = tmp_path / "s"
    sample_chunk(checkpoint=ckpt, manifest=manifest, shards=synth_shards, out=out, chunk="1/1", spec=SPEC, device="cpu")
    from viewfusion.evaluate.samplestore import FILES_PER_CHUNK

    assert len(list((out / "chunks").iterdir())) == FILES_PER_CHUNK and not (out / "pending" / "1-of-1").exists()
    whole = packed_images(out)
    for i in (1, 2):
        sample_chunk(checkpoint=ckpt, manifest=manifest, shards=synth_shards, out=out, chunk=f"{i}/2", spec=SPEC,
                     device="cpu")
        # nothing generated (no progress recorded): the images of the 1-of-1 pack carry this fingerprint
        assert not (out / f"chunks/{i}-of-2.progress.json").exists()
    with Pack(out / "chunks/1-of-2.tar") as a, Pack(out / "chunks/2-of-2.tar") as b:
        assert {**{n: a.read(n) for n in a.members}, **{n: b.read(n) for n in b.members}} == whole


def test_ground_truth_is_the_shards_view_tagged_with_its_data(manifest, synth_shards, tmp_path):
    from viewfusion.data.reader import load_objects
    from viewfusion.data.shardmanifest import data_sha256
    from viewfusion.evaluate import provenance
    from viewfusion.evaluate.samplestore import GroundTruth

    items = json.loads(manifest.read_text())["items"]
    truth = GroundTruth(write_ground_truth(manifest, synth_shards, tmp_path / "gt.tar"),
                        data_sha256(synth_shards, "test"))
    objects = load_objects(synth_shards, "test")
    for it in items[:3]:
        data = truth.read(it)  # verified against the data's fingerprint and the manifest entry
        pixels = torch.from_numpy(np.array(Image.open(io.BytesIO(data)))).permute(2, 0, 1)
        assert torch.equal(pixels, (objects[it["key"]].image(it["target_view"]) * 255).round().to(torch.uint8))
        assert provenance.png_made_by(io.BytesIO(data)).endswith(provenance.item_tag(it))
