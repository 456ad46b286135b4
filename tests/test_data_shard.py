"""Sharding (issue 3, item 3): round trip, determinism, manifest, subsets, and bad inputs."""

from __future__ import annotations

import hashlib
import io
import json
import socket
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from viewfusion.cli import main
from viewfusion.data import nmr
from viewfusion.data.reader import load_objects
from viewfusion.data.shard import check_settings, member_names, write_shards
from viewfusion.data.shardmanifest import read_shard_manifest
from viewfusion.errors import ViewFusionError


def _zip_object(zip_path, key):
    synset, object_id = nmr.split_key(key)
    with zipfile.ZipFile(zip_path) as z:
        images = np.stack([np.asarray(Image.open(io.BytesIO(z.read(nmr.image_member(synset, object_id, v)))))
                           for v in range(24)])
        cameras = nmr.load_cameras(z.read(nmr.cameras_member(synset, object_id)), member="c")
    return images, cameras


def test_round_trip_returns_exactly_what_went_in(synth_zip, synth_shards):
    manifest = read_shard_manifest(synth_shards)
    for split in nmr.SPLITS:
        records = load_objects(synth_shards, split)
        assert list(records) == manifest["splits"][split]["objects"]
        for key, record in records.items():
            images, cameras = _zip_object(synth_zip, key)
            got = (record.images.permute(0, 2, 3, 1) * 255).round().to(dtype=__import__("torch").uint8).numpy()
            np.testing.assert_array_equal(got, images)
            assert record.cameras.keys() == cameras.keys()
            for name, matrix in cameras.items():
                np.testing.assert_array_equal(record.cameras[name], matrix)
    assert sum(len(load_objects(synth_shards, s)) for s in nmr.SPLITS) == 26


def test_manifest_describes_shards(synth_shards):
    manifest = read_shard_manifest(synth_shards)
    assert manifest["image_size"] == 64 and manifest["withheld"] == [] and manifest["gpus"] == 2
    for split, entry in manifest["splits"].items():
        counts = [shard["objects"] for shard in entry["shards"]]
        assert sum(counts) == len(entry["objects"]) == sum(entry["categories"].values())
        assert max(counts) - min(counts) <= 1  # balanced
        for i, shard in enumerate(entry["shards"]):
            assert shard["name"] == f"nmr-{split}-{i:04d}.tar"
            data = (synth_shards / shard["name"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == shard["sha256"] and len(data) == shard["bytes"]
    assert sorted(p.name for p in synth_shards.iterdir()) == sorted(
        ["manifest.json"] + [s["name"] for e in manifest["splits"].values() for s in e["shards"]])


def test_shards_are_standard_tars_with_fixed_metadata(synth_shards):
    import webdataset as wds

    path = synth_shards / "nmr-train-0000.tar"
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        meta = json.loads(tar.extractfile(members[0]).read())  # read in memory, never to disk
    assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" and m.mode == 0o644 for m in members)
    key = members[0].name.split(".")[0]
    assert [m.name for m in members[:26]] == member_names(key)
    assert meta == {"synset": key[:8], "object_id": key[9:], "category": nmr.SYNSETS[key[:8]], "split": "train"}
    samples = list(wds.WebDataset(str(path), shardshuffle=False, empty_check=False))
    assert samples[0]["__key__"] == key and "0023.png" in samples[0] and "cameras.npz" in samples[0]


def test_same_input_gives_byte_identical_shards(synth_zip, synth_shards, tmp_path):
    again = tmp_path / "again"
    write_shards(synth_zip, again, shards=2, gpus=2)
    for path in synth_shards.iterdir():
        assert (again / path.name).read_bytes() == path.read_bytes(), path.name


def test_objects_mix_categories_and_percent_is_nested(synth_zip, tmp_path):
    full = read_shard_manifest(_shard(synth_zip, tmp_path / "full", shards=1))
    half = read_shard_manifest(_shard(synth_zip, tmp_path / "half", shards=1, percent=50))
    for split in nmr.SPLITS:
        assert set(half["splits"][split]["objects"]) <= set(full["splits"][split]["objects"])
        for name, count in full["splits"][split]["categories"].items():
            assert half["splits"][split]["categories"][name] == -(-count // 2)  # ceil
    assert len({key[:8] for key in full["splits"]["train"]["objects"][:9]}) > 5


def test_withhold_removes_category_from_train_only(synth_zip, tmp_path):
    manifest = read_shard_manifest(_shard(synth_zip, tmp_path / "nocar", shards=1, withhold=("car",)))
    assert manifest["withheld"] == ["car"] and manifest["withheld_synsets"] == ["02958343"]
    assert manifest["splits"]["train"]["categories"]["car"] == 0
    assert manifest["splits"]["test"]["categories"]["car"] > 0
    assert not any(k.startswith("02958343") for k in manifest["splits"]["train"]["objects"])


def test_softras_lists(synth_zip, tmp_path):
    manifest = read_shard_manifest(_shard(synth_zip, tmp_path / "soft", shards=1, lists="softras"))
    default = read_shard_manifest(_shard(synth_zip, tmp_path / "vf", shards=1))
    assert manifest["lists"] == "softras"
    assert manifest["splits"]["test"]["objects"] != default["splits"]["test"]["objects"]


def _shard(zip_path, out, **kwargs):
    write_shards(zip_path, out, **kwargs)
    return out


# ------------------------------------------------------------------------------- bad inputs


def _fails(capsys, out, *args) -> str:
    """Run `viewfusion data shard`; it must exit 2 and leave nothing at (or next to) OUT."""
    code = main(["data", "shard", "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert not out.exists() and not list(out.parent.glob(out.name + ".tmp-*"))
    return err


def _first(zip_path, synset="02691156", split="train"):
    with nmr.NMRZip(zip_path) as z:
        return z.split_list(synset, split)[0]


def test_shards_not_divisible_by_gpus(synth_zip, tmp_path, capsys):
    err = _fails(capsys, tmp_path / "o", "--zip", str(synth_zip), "--shards", "3", "--gpus", "2")
    assert "command line: shards 3 is not divisible by gpus 2" in err


def test_unknown_category(synth_zip, tmp_path, capsys):
    err = _fails(capsys, tmp_path / "o", "--zip", str(synth_zip), "--shards", "1", "--withhold", "spaceship")
    assert "unknown category 'spaceship'" in err


def test_wrong_image_size(synth_zip, edit_zip, tmp_path, capsys):
    object_id = _first(synth_zip)
    member = nmr.image_member("02691156", object_id, 4)
    small = io.BytesIO()
    Image.new("RGB", (32, 32), "white").save(small, format="PNG")
    bad = edit_zip(synth_zip, tmp_path / "z.zip", replace={member: small.getvalue()})
    err = _fails(capsys, tmp_path / "o", "--zip", str(bad), "--shards", "1")
    assert member in err and "image is 32x32, expected 64x64" in err


def test_a_member_twice_is_refused_not_sharded_with_its_last_copy(synth_zip, edit_zip, tmp_path, capsys):
    """Issue 30: zipfile reads the last of two members of one name, so a second copy of a view
    silently replaced the first in the shards."""
    member = nmr.image_member("02691156", _first(synth_zip), 3)
    other = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(other, format="PNG")
    with pytest.warns(UserWarning, match="Duplicate name"):
        bad = edit_zip(synth_zip, tmp_path / "z.zip", add={member: other.getvalue()})
    err = _fails(capsys, tmp_path / "o", "--zip", str(bad), "--shards", "1")
    assert err.count("\n") == 1 and f"{bad}: member {member} appears twice" in err


def test_corrupt_png(synth_zip, edit_zip, tmp_path, capsys):
    object_id = _first(synth_zip)
    member = nmr.image_member("02691156", object_id, 7)
    with zipfile.ZipFile(synth_zip) as z:
        data = bytearray(z.read(member))
    data[60:70] = b"garbage!!!"
    bad = edit_zip(synth_zip, tmp_path / "z.zip", replace={member: bytes(data)})
    err = _fails(capsys, tmp_path / "o", "--zip", str(bad), "--shards", "1")
    assert member in err and "corrupt PNG" in err


def test_missing_camera_file(synth_zip, edit_zip, tmp_path, capsys):
    object_id = _first(synth_zip)
    member = nmr.cameras_member("02691156", object_id)
    bad = edit_zip(synth_zip, tmp_path / "z.zip", drop=(member,))
    err = _fails(capsys, tmp_path / "o", "--zip", str(bad), "--shards", "1")
    assert f"object 02691156/{object_id}" in err and member in err


def test_missing_camera_matrix(synth_zip, edit_zip, tmp_path, capsys):
    object_id = _first(synth_zip)
    member = nmr.cameras_member("02691156", object_id)
    with zipfile.ZipFile(synth_zip) as z:
        cams = nmr.load_cameras(z.read(member), member="c")
    buf = io.BytesIO()
    np.savez(buf, **{k: v for k, v in cams.items() if k != "world_mat_11"})
    bad = edit_zip(synth_zip, tmp_path / "z.zip", replace={member: buf.getvalue()})
    err = _fails(capsys, tmp_path / "o", "--zip", str(bad), "--shards", "1")
    assert member in err and "camera world_mat_11 missing" in err


def test_truncated_zip(synth_zip, tmp_path, capsys):
    bad = tmp_path / "z.zip"
    bad.write_bytes(synth_zip.read_bytes()[:100_000])
    assert "not a complete zip" in _fails(capsys, tmp_path / "o", "--zip", str(bad), "--shards", "1")


@pytest.mark.parametrize("name", ["NMR_Dataset/../../evil.sh", "/tmp/evil.sh"])
def test_unsafe_member_names(synth_zip, edit_zip, tmp_path, capsys, name):
    bad = edit_zip(synth_zip, tmp_path / "z.zip", add={name: b"#!/bin/sh\n"})
    assert "unsafe member name" in _fails(capsys, tmp_path / "o", "--zip", str(bad), "--shards", "1")


def test_missing_metadata(synth_zip, edit_zip, tmp_path, capsys):
    bad = edit_zip(synth_zip, tmp_path / "z.zip", drop=("metadata.yaml",))
    assert "metadata.yaml missing" in _fails(capsys, tmp_path / "o", "--zip", str(bad), "--shards", "1")


def test_too_many_shards_for_train(synth_zip, tmp_path, capsys):
    assert "fewer than --shards 40" in _fails(capsys, tmp_path / "o", "--zip", str(synth_zip), "--shards", "40")


def test_existing_output_needs_force(synth_zip, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    assert main(["data", "shard", "--zip", str(synth_zip), "--out", str(out), "--shards", "1"]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert main(["data", "shard", "--zip", str(synth_zip), "--out", str(out), "--shards", "1", "--force"]) == 0
    assert (out / "manifest.json").exists() and len(list(tmp_path.iterdir())) == 1


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_stale_scratch_folders_of_dead_runs_are_removed(synth_zip, tmp_path):
    """A killed `data shard` leaves OUT.tmp-<host>-<pid>; the next run removes it, but never
    the folder of a live process nor one of another host (whose pid means nothing here)."""
    out, host = tmp_path / "shards", socket.gethostname()
    live = subprocess.Popen(["sleep", "60"])
    try:
        names = {"dead": f"shards.tmp-{host}-{_dead_pid()}", "legacy": f"shards.tmp-{_dead_pid()}",
                 "old": f"shards.old-{host}-{_dead_pid()}", "live": f"shards.tmp-{host}-{live.pid}",
                 "other_host": f"shards.tmp-elsewhere-{_dead_pid()}", "not_ours": f"shards-{_dead_pid()}"}
        for name in names.values():
            (tmp_path / name).mkdir()
            (tmp_path / name / "nmr-train-0000.tar").write_bytes(b"half-written")
        stats = write_shards(synth_zip, out, shards=1)
    finally:
        live.kill()
        live.wait()
    assert sorted(stats["stale_removed"]) == sorted([names["dead"], names["legacy"], names["old"]])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["shards", names["live"], names["other_host"], names["not_ours"]])


def test_full_disk_is_one_clear_error_and_keeps_the_old_output(synth_zip, full_disk, capsys):
    """ENOSPC while writing shards: exit 2 with one line naming OUT; the previous OUT (--force)
    is untouched and no scratch folder is left on the full disk."""
    out = full_disk / "shards"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    code = main(["data", "shard", "--zip", str(synth_zip), "--out", str(out), "--shards", "1", "--force"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"{out}: no space left on the device" in err
    assert sorted(p.name for p in full_disk.rglob("*")) == ["manifest.json", "shards"]
    assert (out / "manifest.json").read_text() == "{}"


# ------------------------------------------------------- check_settings (issue 16, item 7)


def test_check_settings_accepts_good_settings():
    check_settings(shards=4, gpus=2)
    check_settings(shards=3, gpus=1, withhold=["car", "02691156"], source="shard_sets.nocar")
    check_settings(shards=1, gpus=1, withhold=())


@pytest.mark.parametrize(("settings", "message"), [
    ({"shards": 0, "gpus": 1}, "shards must be an integer >= 1, got 0"),
    ({"shards": 4, "gpus": 0}, "gpus must be an integer >= 1, got 0"),
    ({"shards": True, "gpus": 1}, "shards must be an integer >= 1, got True"),
    ({"shards": "4", "gpus": 1}, "shards must be an integer >= 1, got '4'"),
    ({"shards": 6, "gpus": 4}, "shards 6 is not divisible by gpus 4: .*set shards to a multiple of 4"),
    ({"shards": 4, "gpus": 2, "withhold": ["car", "spaceship"]}, "withhold: unknown category 'spaceship'"),
    ({"shards": 4, "gpus": 2, "withhold": "car"}, "withhold must be a list of categories, got the string 'car'"),
    ({"shards": 4, "gpus": 2, "withhold": [2958343]}, "withhold entry 2958343 is not a string; quote synset ids"),
    ({"shards": 4, "gpus": 2, "withhold": list(nmr.CATEGORIES)}, "withhold names every category"),
])
def test_check_settings_refuses_with_the_source_named(settings, message):
    with pytest.raises(ViewFusionError, match=f"^shard_sets.small \\(gpus: training.nproc\\): {message}"):
        check_settings(**settings, source="shard_sets.small (gpus: training.nproc)")


def test_check_settings_module_imports_no_torch():
    """The Snakefile imports it while parsing: torch would add seconds to every `snakemake -n`."""
    code = "import sys, viewfusion.data.shard; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ------------------------------------------------ names taken from data (issue 16, item 8)


@pytest.mark.parametrize("object_id", ["../../evil", "-rf", "e\\vil", "a b"])
def test_hostile_split_list_entry_is_refused(synth_zip, edit_zip, tmp_path, capsys, object_id):
    """An object id becomes zip member names, tar member names and (in keys) sample file
    names: a split list naming `../../evil` is refused before anything is read or written."""
    member = nmr.list_member("02691156", "train")
    with zipfile.ZipFile(synth_zip) as z:
        listing = z.read(member).decode()
    bad = edit_zip(synth_zip, tmp_path / "z.zip", replace={member: f"{listing}{object_id}\n".encode()})
    err = _fails(capsys, tmp_path / "o", "--zip", str(bad), "--shards", "1")
    assert f"{member} object id: {object_id!r} is not a plain name" in err
    assert main(["data", "verify", "--zip", str(bad)]) == 2
    assert f"{object_id!r} is not a plain name" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["z.zip"]
    assert not (tmp_path.parent / "evil").exists() and not (tmp_path.parent.parent / "evil").exists()


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m["splits"]["test"]["shards"][0].update(name="../../evil.tar"),
     r"splits.test.shards\[0\].name: '../../evil.tar' is not a plain name"),
    (lambda m: m["splits"]["test"]["shards"][1].update(name="/etc/passwd"),
     r"splits.test.shards\[1\].name: '/etc/passwd' is not a plain name"),
    (lambda m: m["splits"]["test"]["objects"].append("02691156_../x"),
     r"splits.test.objects: '02691156_../x' is not a plain name"),
    (lambda m: m["splits"]["val"]["shards"][0].pop("sha256"), r"splits.val: malformed \(KeyError: 'sha256'\)"),
])
def test_hostile_names_in_the_shard_manifest_are_refused(synth_shards, tmp_path, edit, message):
    import shutil

    copy = shutil.copytree(synth_shards, tmp_path / "shards")
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ViewFusionError, match=f"manifest.json: {message}"):
        load_objects(copy, "test")
