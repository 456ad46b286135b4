"""`viewfusion figures` on hand-made inputs in the layouts of docs/FORMATS.md ("Samples", "Figure
inputs"): every figure is a non-empty PNG or a multi-frame GIF, and absent inputs are notes.

    .venv/bin/python -m pytest -q tests/test_figures.py
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sample_utils import marker_settings, write_chunk, write_ground_truth

from viewfusion import cli
from viewfusion.errors import ViewFusionError
from viewfusion.evaluate import provenance
from viewfusion.fsutil import sha256_file
from viewfusion.report import figures, weightfigs

COND = [0, 4, 8, 12, 16, 20]
KEY = "02958343_abc"
FP = marker_settings()["fingerprint"]  # the fingerprint of hand-made sample directories


def random_image(rng: np.random.Generator, size: int = 16) -> np.ndarray:
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def write_png(path: Path, rng: np.random.Generator, size: int = 16) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(random_image(rng, size)).save(path)


def write_marker(root: Path, items: list[dict], manifest: Path, *, eta: float = 0.0) -> None:
    (root / "chunks" / "1-of-1.json").write_text(json.dumps({
        "chunk": 1, "of": 1, "items": [it["item"] for it in items], **marker_settings(eta=eta),
        "checkpoint_step": 10, "experiment": "tiny", "seconds_per_target": 0.5,
        "manifest": str(manifest), "manifest_sha256": sha256_file(manifest)}))


def make_figure_samples(root: Path, *, targets=range(0, 24, 6)) -> Path:
    """`viewfusion sample-figures` output: weights/ (one object, six inputs) and autoregressive/."""
    rng = np.random.default_rng(0)
    weights_dir = root / "weights"
    items = [{"item": f"{KEY}-t{t:02d}-v6-0", "key": KEY, "synset": "02958343", "object_id": "abc",
              "target_view": t, "cond_views": COND, "view_count": 6, "seed": t} for t in [*targets, *COND]]
    items = list({it["item"]: it for it in items}.values())
    weights_dir.mkdir(parents=True)
    manifest = weights_dir / "manifest.json"
    manifest.write_text(json.dumps({"split": "test", "seed": 0, "view_count": 6, "source": "figure", "items": items}))
    npz = {}
    for it in items:
        logits = rng.normal(size=(3, 6, 16, 16))
        maps = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        buffer = io.BytesIO()
        np.savez(buffer, steps=np.array([0, 25, 49]), mean=maps.mean(axis=(-1, -2)),
                 final=maps[-1].astype(np.float16), cond_views=np.array(COND),
                 made_by=np.asarray(provenance.made_by(FP, it)))
        npz[it["item"]] = buffer.getvalue()
    write_chunk(weights_dir, "1-of-1", items, {it["item"]: random_image(rng) for it in items}, FP, weights=npz)
    write_ground_truth(manifest, items, {it["item"]: random_image(rng) for it in items})
    write_marker(weights_dir, items, manifest)
    seq_dir = root / "autoregressive"
    steps = []
    for k, target in enumerate(range(3, 24, 3)):
        write_png(seq_dir / f"step_{k:02d}.png", rng)
        write_png(seq_dir / f"gt_{k:02d}.png", rng)
        steps.append({"step": k, "target_view": target, "file": f"step_{k:02d}.png", "gt": f"gt_{k:02d}.png",
                      "cond": ["gt:0"] + [f"gen:{v}" for v in range(3, target, 3)]})
    (seq_dir / "sequence.json").write_text(json.dumps({"key": KEY, "start_view": 0, "steps": steps}))
    done = {"experiment": "paper", "checkpoint_step": 10, "sampler": "ddim", "steps": 50}
    (root / "done.json").write_text(json.dumps(done))
    return root


def make_sample_dir(root: Path, *, views: int, keys=("02958343_a", "03001627_b", "04379243_c"),
                    eta: float = 0.0) -> Path:
    """A finished sample directory (pack, marker, the manifest's ground truth) plus its metrics
    file, as the workflow lays them out."""
    rng = np.random.default_rng(views)
    rows, items = [], []
    for key in keys:
        name = f"{key}-t23-v{views}-0"  # the target is no conditioning view (range(views))
        items.append({"item": name, "key": key, "target_view": 23, "cond_views": list(range(views)), "seed": 0})
        rows.append({"item": name, "key": key, "synset": key[:8], "category": key[:8], "object_id": key[9:],
                     "target_view": 23, "view_count": views, "experiment": "tiny", "checkpoint_step": 10,
                     "sampler": "ddim-eta1" if eta else "ddim", "steps": 50, "seconds_per_target": 0.5,
                     "protocol": "official", "weights_sha256": "a" * 64,
                     "psnr": 20 + views + rng.random(),
                     "ssim": 0.7 + 0.01 * rng.random(), "lpips": 0.2 - 0.01 * rng.random(), "lpips_net": "vgg"})
    manifest = root.parent / f"manifest-{root.name}.json"
    root.mkdir(parents=True)
    manifest.write_text(json.dumps({"split": "test", "seed": 0, "view_count": views, "items": items}))
    write_chunk(root, "1-of-1", items, {it["item"]: random_image(rng) for it in items},
                marker_settings(eta=eta)["fingerprint"])
    write_ground_truth(manifest, items, {it["item"]: random_image(rng) for it in items})
    write_marker(root, items, manifest, eta=eta)
    pd.DataFrame(rows).to_parquet(root / "metrics.parquet")
    return root


def assert_images(out: Path, names: list[str]) -> None:
    for name in names:
        path = out / name
        assert path.stat().st_size > 0, name
        with Image.open(path) as image:
            assert image.width > 50 and image.height > 50
            if name.endswith(".gif"):
                assert image.n_frames > 1


def test_all_figures_from_workflow_layout(tmp_path, capsys):
    fig_dir = make_figure_samples(tmp_path / "figure_samples" / "paper")
    sample_dirs = [make_sample_dir(tmp_path / "samples" / f"v{v}", views=v) for v in (1, 3, 8)]
    out = tmp_path / "figures"
    metrics = [str(d / "metrics.parquet") for d in sample_dirs]
    assert cli.main(["figures", "--metrics", *metrics, "--figure-samples", str(fig_dir), "--out", str(out)]) == 0
    assert_images(out, ["metrics_vs_views.png", "view_weights_paper.png", "weight_maps_paper.png",
                        "weight_maps_paper.gif", "autoregressive_paper.png", "autoregressive_paper.gif",
                        "extrapolation_grid_tiny_step10_ddim-50.png"])
    with Image.open(out / "weight_maps_paper.gif") as gif:
        assert gif.n_frames == 8  # every target of the manifest: 0, 6, 12, 18 and the inputs 4, 8, 16, 20
    with Image.open(out / "autoregressive_paper.gif") as gif:
        assert gif.n_frames == 8  # the input view, then seven generated views
    assert not list(out.glob(".*"))  # no temporary files left


def test_grids_keep_ddim_runs_apart_by_eta(tmp_path):
    dirs = [make_sample_dir(tmp_path / f"eta{eta:g}" / f"v{v}", views=v, eta=eta)
            for eta in (0.0, 1.0) for v in (1, 3)]
    out = tmp_path / "figures"
    assert cli.main(["figures", "--metrics", *(str(d / "metrics.parquet") for d in dirs), "--out", str(out)]) == 0
    assert_images(out, ["extrapolation_grid_tiny_step10_ddim-50.png",
                        "extrapolation_grid_tiny_step10_ddim-eta1-50.png"])


def test_weight_samples_read_as_documented(tmp_path):
    fig_dir = make_figure_samples(tmp_path / "f")
    cond, samples = weightfigs.read_weight_samples(fig_dir / "weights", stat="average")
    assert cond == COND and list(samples["target_view"]) == sorted(samples["target_view"])
    assert all(abs(w.sum() - 1) < 1e-6 for w in samples["weights"])


def test_absent_inputs_are_notes_and_bad_ones_errors(tmp_path, capsys):
    fig_dir = make_figure_samples(tmp_path / "f")
    (fig_dir / "autoregressive" / "sequence.json").unlink()
    single = make_sample_dir(tmp_path / "v2", views=2)
    out = tmp_path / "out"
    assert cli.main(["figures", "--figure-samples", str(fig_dir), "--grid-samples", str(single),
                     "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "sequence.json missing" in printed and "one view count only" in printed
    assert (out / "view_weights_paper.png").exists() and not (out / "autoregressive_paper.png").exists()
    assert cli.main(["figures", "--out", str(out)]) == 2
    manifest = json.loads((fig_dir / "weights" / "manifest.json").read_text())
    manifest["items"][0].update(cond_views=[1, 2], view_count=2)
    (fig_dir / "weights" / "manifest.json").write_text(json.dumps(manifest))
    write_marker(fig_dir / "weights", manifest["items"], fig_dir / "weights" / "manifest.json")  # sampled from it
    with pytest.raises(ViewFusionError, match="share one object"):
        weightfigs.read_weight_samples(fig_dir / "weights")


@pytest.mark.parametrize("field, value", [("file", "../../../outside.png"), ("gt", "/etc/hostname")])
def test_figure_inputs_never_name_files_outside_their_folder(tmp_path, capsys, field, value):
    """sequence.json names PNGs relative to autoregressive/: a path there is refused, not read."""
    fig_dir = make_figure_samples(tmp_path / "fig")
    seq = fig_dir / "autoregressive" / "sequence.json"
    sequence = json.loads(seq.read_text())
    sequence["steps"][0][field] = value
    seq.write_text(json.dumps(sequence))
    assert cli.main(["figures", "--figure-samples", str(fig_dir), "--out", str(tmp_path / "out")]) == 2
    assert "not a plain name" in capsys.readouterr().err


def test_every_sampler_series_has_its_own_style():
    styles = figures.series_styles([f"s{i}" for i in range(20)])
    assert len(set(styles.values())) == 20 and len({color for color, _ in styles.values()}) == 20


def test_quality_against_unet_calls_is_drawn_for_several_samplers(tmp_path):
    from test_tables import hand_made

    from viewfusion.report import tables

    frame = hand_made()
    frame["unet_evals_per_target"] = frame["steps"].fillna(0) * frame["view_count"]
    frame.to_parquet(tmp_path / "m.parquet")
    loaded = tables.load_metrics([tmp_path / "m.parquet"])
    path = figures.quality_vs_cost(loaded, tmp_path)
    assert path is not None and path.stat().st_size > 1000
    assert figures.quality_vs_cost(loaded[loaded["sampler"] == "ddim"], tmp_path / "one") is None


def test_figures_of_an_earlier_run_are_removed_not_left_to_mislead(tmp_path, capsys):
    out = tmp_path / "figures"
    out.mkdir()
    old = out / "extrapolation_grid_tiny_step5_ddim-50.png"  # drawn by a run with other samples
    write_png(old, np.random.default_rng(0))
    mine = out / "my_notes.png"  # not a name this command draws: left alone
    write_png(mine, np.random.default_rng(1))
    sample_dir = make_sample_dir(tmp_path / "samples" / "v2", views=2)
    assert cli.main(["figures", "--metrics", str(sample_dir / "metrics.parquet"), "--out", str(out)]) == 0
    assert not old.exists() and mine.exists() and (out / "metrics_vs_views.png").exists()
    assert "removed extrapolation_grid_tiny_step5_ddim-50.png" in capsys.readouterr().out


def test_a_grid_never_pairs_samples_with_a_changed_manifest(tmp_path, capsys):
    """The markers record the manifest they sampled (path and sha256): figures refuse another."""
    dirs = [make_sample_dir(tmp_path / f"v{v}", views=v) for v in (1, 3)]
    manifest = tmp_path / "manifest-v3.json"
    manifest.write_text(manifest.read_text() + "\n")  # same items, other bytes: not the file sampled
    args = ["figures", "--grid-samples", *map(str, dirs), "--out", str(tmp_path / "out")]
    assert cli.main(args) == 2
    assert "not the manifest its chunks were sampled from" in capsys.readouterr().err
