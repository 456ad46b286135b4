"""Packed sample storage (viewfusion.evaluate.samplestore): packs are deterministic tars read by member
name, never extracted; a member is returned only under the `made_by` it was made with; ground
truth is checked against the data it must come from."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import tarfile

import numpy as np
import pytest
from sample_utils import DATA, marker_settings, png_bytes, write_chunk, write_ground_truth

from viewfusion import cli
from viewfusion.errors import ViewFusionError
from viewfusion.evaluate import pending, provenance, samplestore

FP = marker_settings()["fingerprint"]


def _items(n: int = 3) -> list[dict]:
    return [{"item": f"02958343_k{k}-t0{k}-v1-0", "key": f"02958343_k{k}", "target_view": k, "cond_views": [9],
             "seed": k} for k in range(n)]


def _images(items, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {it["item"]: rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for it in items}


def _finished(tmp_path, items=None):
    items = items or _items()
    root, manifest = tmp_path / "s", tmp_path / "m.json"
    manifest.write_text(json.dumps({"split": "test", "seed": 0, "items": items}))
    images, gts = _images(items, 0), _images(items, 1)
    write_chunk(root, "1-of-1", items, images, FP)
    write_ground_truth(manifest, items, gts)
    marker = {"chunk": 1, "of": 1, "items": [it["item"] for it in items], **marker_settings(),
              "manifest": str(manifest)}
    samplestore.marker_path(root, "1-of-1").write_text(json.dumps(marker))
    return root, manifest, images, gts


def test_packs_are_deterministic_plain_tars(tmp_path):
    members = [("a.png", b"x" * 700), ("b.npz", b"y")]
    samplestore.write_pack(tmp_path / "1.tar", members)
    samplestore.write_pack(tmp_path / "2.tar", members)
    assert (tmp_path / "1.tar").read_bytes() == (tmp_path / "2.tar").read_bytes()
    with tarfile.open(tmp_path / "1.tar") as tar:  # any tar tool reads it
        assert [(m.name, m.size, m.mtime, m.mode) for m in tar.getmembers()] == [("a.png", 700, 0, 0o644),
                                                                                 ("b.npz", 1, 0, 0o644)]
    with samplestore.Pack(tmp_path / "1.tar") as pack:
        assert pack.read("a.png") == b"x" * 700 and pack.read("c.png") is None


@pytest.mark.parametrize("name", ["../up.png", "/abs.png", "a/b.png", ".hidden.png"])
def test_pack_member_names_must_be_plain(tmp_path, name):
    with pytest.raises(ViewFusionError, match="plain"):
        samplestore.write_pack(tmp_path / "p.tar", [(name, b"x")])
    assert not (tmp_path / "p.tar").exists()


def test_a_pack_with_a_member_twice_is_refused(tmp_path):
    with tarfile.open(tmp_path / "dup.tar", "w") as tar:
        for data in (b"old", b"new"):
            info = tarfile.TarInfo("a.png")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ViewFusionError, match="appears twice"):
        samplestore.Pack(tmp_path / "dup.tar")


def test_finished_samples_and_ground_truth_verify_every_read(tmp_path):
    root, manifest, images, gts = _finished(tmp_path)
    items = _items()
    samples = samplestore.FinishedSamples(root)
    assert samples.read(items[0]) == png_bytes(images[items[0]["item"]], provenance.made_by(FP, items[0]))
    moved = {**items[0], "cond_views": [8]}  # the same name, another manifest entry
    with pytest.raises(ViewFusionError, match="other settings or manifest entry"):
        samples.read(moved)
    truth = samplestore.GroundTruth(samplestore.ground_truth_path(manifest), DATA)
    assert truth.read(items[1]).startswith(b"\x89PNG")
    with pytest.raises(ViewFusionError, match="other data"):
        samplestore.GroundTruth(samplestore.ground_truth_path(manifest), "0" * 64).read(items[1])
    with pytest.raises(ViewFusionError, match="viewfusion ground-truth"):
        samplestore.GroundTruth(tmp_path / "none.gt.tar", DATA)


def test_a_marked_chunk_without_its_pack_is_a_clear_error(tmp_path):
    root, _, _, _ = _finished(tmp_path)
    samplestore.pack_path(root, "1-of-1").unlink()
    with pytest.raises(ViewFusionError, match="1-of-1.tar is missing"):
        samplestore.FinishedSamples(root).read(_items()[0])


def test_export_writes_the_verified_pngs(tmp_path, capsys):
    root, manifest, images, gts = _finished(tmp_path)
    out = tmp_path / "look"
    assert cli.main(["export", "--generated", str(root), "--manifest", str(manifest), "--out", str(out),
                     "--ground-truth"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 6 and all(n.endswith(".png") for n in names)
    from PIL import Image

    first = _items()[0]["item"]
    assert np.array_equal(np.asarray(Image.open(out / f"{first}.png")), images[first])
    assert np.array_equal(np.asarray(Image.open(out / f"{first}.gt.png")), gts[first])
    assert cli.main(["export", "--generated", str(root), "--manifest", str(manifest), "--out", str(out),
                     "--item", "../../etc/passwd"]) == 2
    assert "--item ../../etc/passwd" in capsys.readouterr().err


def test_clean_pending_drops_only_what_a_complete_pack_holds(tmp_path):
    """Stray pending files used to stay after a concurrent run completed their chunk (issue 30)."""
    root, _, images, _ = _finished(tmp_path)  # chunk 1-of-1 complete: marker and pack
    items, host = _items(4), socket.gethostname()  # the 4th is in no complete chunk
    images = {**images, **_images(items[3:], 5)}
    dead = subprocess.Popen(["true"])
    dead.wait()
    tagged = {it["item"]: provenance.made_by(FP, it) for it in items}
    other = {it["item"]: provenance.made_by("f" * 64, it) for it in items}  # made by other settings
    name = [it["item"] + samplestore.IMAGE for it in items]
    files = {  # (folder, name) -> (bytes, kept?)
        ("1-of-1", name[0]): (png_bytes(images[items[0]["item"]], tagged[items[0]["item"]]), False),  # the packed one
        ("1-of-1", name[1]): (png_bytes(images[items[0]["item"]], tagged[items[1]["item"]]), False),  # same made_by
        ("1-of-1", name[2]): (png_bytes(images[items[2]["item"]], other[items[2]["item"]]), True),  # other settings
        ("1-of-1", f".{name[2]}.tmp-{host}-{os.getpid()}"): (b"half", True),  # a live writer's
        ("1-of-1", f".{name[1]}.tmp-{host}-{dead.pid}"): (b"half", False),  # a dead writer's
        ("1-of-2", name[0]): (png_bytes(images[items[0]["item"]], tagged[items[0]["item"]]), False),  # other chunking
        ("2-of-2", "02958343_k9-t09-v1-0.png"): (b"not packed anywhere", True),
        ("1-of-3", name[3]): (png_bytes(images[items[3]["item"]], tagged[items[3]["item"]]), True),
    }
    for (folder, file), (data, _) in files.items():
        (root / "pending" / folder).mkdir(parents=True, exist_ok=True)
        (root / "pending" / folder / file).write_bytes(data)
    write_chunk(root, "1-of-3", items[3:], images, FP)  # a pack without its marker (a rerun) vouches for nothing
    assert pending.clean_pending(root) == sum(not kept for _, kept in files.values())
    left = {(p.parent.name, p.name) for p in (root / "pending").rglob("*") if p.is_file()}
    assert left == {key for key, (_, kept) in files.items() if kept}
    assert not (root / "pending" / "1-of-2").exists(), "an emptied folder goes"
    assert samplestore.FinishedSamples(root).read(items[0]) == files[("1-of-1", name[0])][0]
