"""NMR constants, safe zip reading and `viewfusion data verify` (issue 3, items 1-3 shared code)."""

from __future__ import annotations

import io
import math
import zipfile

import numpy as np
import pytest
from PIL import Image

from viewfusion.cli import main
from viewfusion.data import nmr
from viewfusion.data.verify import verify_zip
from viewfusion.errors import ViewFusionError


def _png(size: int, *, color=(10, 20, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def test_constants():
    assert len(nmr.SYNSETS) == 13 and next(iter(nmr.SYNSETS.values())) == "airplane"
    assert list(nmr.SYNSETS.values())[-1] == "vessel" and nmr.CATEGORIES["car"] == "02958343"
    assert nmr.NUM_VIEWS == 24 and nmr.IMAGE_SIZE == 64
    assert nmr.view_angle(6) == pytest.approx(math.pi / 2)
    assert nmr.view_angle(23) == pytest.approx(2 * math.pi * 23 / 24)
    assert nmr.focal_px() == pytest.approx(119.4, abs=0.05)
    assert nmr.split_key(nmr.object_key("02958343", "ab_c")) == ("02958343", "ab_c")


def test_resolve_category():
    assert nmr.resolve_category("car") == nmr.resolve_category("02958343") == "02958343"
    with pytest.raises(ViewFusionError, match="unknown category 'spaceship'"):
        nmr.resolve_category("spaceship")


@pytest.mark.parametrize("name", ["../evil.png", "NMR_Dataset/../../x", "/etc/passwd", "C:/x", "\\abs"])
def test_unsafe_member_names_rejected(name):
    with pytest.raises(ViewFusionError, match="unsafe member name"):
        nmr.check_member_name(name)


def test_safe_member_names_accepted():
    nmr.check_member_name("NMR_Dataset/02691156/abc/image/0000.png")
    nmr.check_member_name("NMR_Dataset/a..b/c")  # dots inside a name are fine


def test_check_png_detects_size_corruption_and_truncation():
    good = _png(64)
    nmr.check_png(good, member="m")
    with pytest.raises(ViewFusionError, match="m: image is 32x32, expected 64x64"):
        nmr.check_png(_png(32), member="m")
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    with pytest.raises(ViewFusionError, match="m: corrupt PNG"):
        nmr.check_png(bytes(flipped), member="m")
    with pytest.raises(ViewFusionError, match="m: truncated PNG"):
        nmr.check_png(good[: len(good) - 20], member="m")
    with pytest.raises(ViewFusionError, match="not a PNG"):
        nmr.check_png(b"GIF89a" + good, member="m")


def test_decode_png_names_member():
    assert nmr.decode_png(_png(64), member="m").shape == (64, 64, 3)
    with pytest.raises(ViewFusionError, match="m: unreadable PNG"):
        nmr.decode_png(b"\x89PNG\r\n\x1a\nnonsense", member="m")


def test_camera_checks(synth_zip):
    with nmr.NMRZip(synth_zip) as z:
        synset = "02691156"
        object_id = z.split_list(synset, "train")[0]
        data = z.read(nmr.cameras_member(synset, object_id))
    cams = nmr.load_cameras(data, member="c")
    assert cams["world_mat_0"].shape == (4, 4) and len(cams) == 96
    buf = io.BytesIO()
    np.savez(buf, **{k: v for k, v in cams.items() if k != "camera_mat_7"})
    with pytest.raises(ViewFusionError, match="c: camera camera_mat_7 missing"):
        nmr.check_cameras(buf.getvalue(), member="c")


def test_a_camera_twice_is_refused(synth_zip):
    """numpy loads the last of two npz members of one name: which camera is meant is undefined."""
    with nmr.NMRZip(synth_zip) as z:
        object_id = z.split_list("02691156", "train")[0]
        data = z.read(nmr.cameras_member("02691156", object_id))
    buf = io.BytesIO(data)
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(buf, "a") as npz:
        npz.writestr("world_mat_5.npy", npz.read("world_mat_4.npy"))
    with pytest.raises(ViewFusionError, match="^c: camera world_mat_5 appears twice$"):
        nmr.check_cameras(buf.getvalue(), member="c")


def test_verify_refuses_a_member_twice(synth_zip, edit_zip, tmp_path, capsys):
    member = nmr.list_member("02691156", "test")
    with pytest.warns(UserWarning, match="Duplicate name"):
        bad = edit_zip(synth_zip, tmp_path / "z.zip", add={member: b"other\n"})
    assert main(["data", "verify", "--zip", str(bad), "--full"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{bad}: member {member} appears twice" in err


def test_verify_synthetic_zip(synth_zip):
    summary = verify_zip(synth_zip, full=True)
    assert summary["objects"] == 26 and summary["decoded_objects"] == 26
    assert summary["splits"]["train"] + summary["splits"]["val"] + summary["splits"]["test"] == 26
    assert main(["data", "verify", "--zip", str(synth_zip)]) == 0


def test_verify_report(synth_zip, tmp_path):
    report = tmp_path / "r" / "check.json"
    assert main(["data", "verify", "--zip", str(synth_zip), "--report", str(report)]) == 0
    summary = __import__("json").loads(report.read_text())
    assert summary["objects"] == 26 and summary["per_category"]["train"]["airplane"] == 1


def test_verify_missing_metadata(synth_zip, edit_zip, tmp_path, capsys):
    bad = edit_zip(synth_zip, tmp_path / "z.zip", drop=("metadata.yaml",))
    assert main(["data", "verify", "--zip", str(bad)]) == 2
    assert "NMR_Dataset/metadata.yaml missing" in capsys.readouterr().err


def test_verify_truncated_zip(synth_zip, tmp_path, capsys):
    bad = tmp_path / "z.zip"
    bad.write_bytes(synth_zip.read_bytes()[: synth_zip.stat().st_size // 2])
    assert main(["data", "verify", "--zip", str(bad)]) == 2
    assert "not a complete zip" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["NMR_Dataset/../evil.txt", "/abs/evil.txt"])
def test_verify_rejects_unsafe_names(synth_zip, edit_zip, tmp_path, capsys, name):
    bad = edit_zip(synth_zip, tmp_path / "z.zip", add={name: b"x"})
    assert main(["data", "verify", "--zip", str(bad)]) == 2
    assert f"unsafe member name {name!r}" in capsys.readouterr().err


def test_verify_missing_image_names_object_and_member(synth_zip, edit_zip, tmp_path):
    with nmr.NMRZip(synth_zip) as z:
        object_id = z.split_list("02958343", "test")[0]
    member = nmr.image_member("02958343", object_id, 5)
    bad = edit_zip(synth_zip, tmp_path / "z.zip", drop=(member,))
    with pytest.raises(ViewFusionError, match=f"object 02958343/{object_id}: member {member} missing"):
        verify_zip(bad)


def test_verify_unknown_category_in_metadata(synth_zip, edit_zip, tmp_path):
    meta = b'{"99999999": {"id": "99999999", "name": "ufo"}}'
    bad = edit_zip(synth_zip, tmp_path / "z.zip", replace={"metadata.yaml": meta})
    with pytest.raises(ViewFusionError, match="unknown category '99999999'"):
        verify_zip(bad)


def test_plain_yaml_metadata_and_extra_object_members(synth_zip, edit_zip, tmp_path):
    # Unquoted synsets (four of them read as octal integers by a plain YAML load), directory
    # entries, and the per-object extras the real dataset may hold (mask/, visual_hull_depth/,
    # pointcloud.npz): all fine, and the objects read as before.
    meta = "".join(f"{s}:\n  id: {s}\n  name: {n}\n" for s, n in nmr.SYNSET_NAMES.items()).encode()
    with nmr.NMRZip(synth_zip) as z:
        object_id = next(o for split in ("train", "val", "test") for o in z.split_list("03001627", split))
        want = z.read_object("03001627", object_id)
    folder = f"{nmr.ROOT}03001627/{object_id}/"
    extras = {folder: b"", folder + "mask/0000.png": _png(64), folder + "pointcloud.npz": b"PK",
              folder + "visual_hull_depth/0000.exr": b"\x76\x2f\x31\x01"}
    zipped = edit_zip(synth_zip, tmp_path / "z.zip", replace={"metadata.yaml": meta}, add=extras)
    verify_zip(zipped)
    with nmr.NMRZip(zipped) as z:
        assert sorted(z.metadata) == sorted(nmr.SYNSETS) and z.metadata["03001627"]["id"] == "03001627"
        assert z.read_object("03001627", object_id) == want


def test_reads_never_extract(synth_zip, tmp_path, monkeypatch):
    monkeypatch.setattr(zipfile.ZipFile, "extract", lambda *a, **k: pytest.fail("extracted"))
    monkeypatch.setattr(zipfile.ZipFile, "extractall", lambda *a, **k: pytest.fail("extracted"))
    monkeypatch.chdir(tmp_path)
    verify_zip(synth_zip, sample=4)
    assert list(tmp_path.iterdir()) == []
