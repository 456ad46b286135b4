"""The synthetic NMR-layout dataset (issue 3, item 2)."""

from __future__ import annotations

import io
import math
import zipfile

import numpy as np
import pytest
import yaml
from PIL import Image

from viewfusion.cli import main
from viewfusion.data import nmr, primitives, render, synth
from viewfusion.data.verify import verify_zip


def _images(zip_path, obj) -> np.ndarray:
    with zipfile.ZipFile(zip_path) as z:
        return np.stack([np.asarray(Image.open(io.BytesIO(z.read(nmr.image_member(obj.synset, obj.object_id, v)))))
                         for v in range(nmr.NUM_VIEWS)])


def _cameras(zip_path, obj) -> dict:
    with zipfile.ZipFile(zip_path) as z:
        return nmr.load_cameras(z.read(nmr.cameras_member(obj.synset, obj.object_id)), member="c")


def test_same_seed_byte_identical_and_independent_of_workers(tmp_path):
    a, b, c = tmp_path / "a.zip", tmp_path / "b.zip", tmp_path / "c.zip"
    synth.write_synth_zip(a, objects=4, seed=7, image_size=32, workers=1)
    synth.write_synth_zip(b, objects=4, seed=7, image_size=32, workers=2)
    synth.write_synth_zip(c, objects=4, seed=8, image_size=32, workers=1)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert [p.name for p in tmp_path.iterdir()].count("a.zip") == 1 and len(list(tmp_path.iterdir())) == 3


def test_layout_is_nmr(synth_zip):
    with zipfile.ZipFile(synth_zip) as z:
        names = set(z.namelist())
        metadata = yaml.safe_load(z.read("NMR_Dataset/metadata.yaml"))
        assert all(info.date_time == (1980, 1, 1, 0, 0, 0) for info in z.infolist())
    assert set(metadata) == set(nmr.SYNSETS)
    assert metadata["02958343"]["name"].startswith("car")
    for synset in nmr.SYNSETS:
        for prefix in ("", "softras_"):
            for split in nmr.SPLITS:
                assert f"NMR_Dataset/{synset}/{prefix}{split}.lst" in names
    obj = synth.make_object(0)
    assert nmr.image_member(obj.synset, obj.object_id, 23) in names
    assert _images(synth_zip, obj).shape == (24, 64, 64, 3)
    assert verify_zip(synth_zip, full=True)["objects"] == 26


def test_splits_cover_every_object_once(synth_zip):
    with nmr.NMRZip(synth_zip) as z:
        for lists in ("viewfusion", "softras"):
            ids = [i for s in nmr.SYNSETS for split in nmr.SPLITS for i in z.split_list(s, split, lists=lists)]
            assert len(ids) == len(set(ids)) == 26
        assert z.split_list("02691156", "train") != [] and z.split_list("02958343", "test") != []


def test_cameras_match_nmr_geometry(synth_zip):
    cams = _cameras(synth_zip, synth.make_object(0))
    for view in range(24):
        world, cam = cams[f"world_mat_{view}"].astype(float), cams[f"camera_mat_{view}"].astype(float)
        np.testing.assert_allclose(world @ cams[f"world_mat_inv_{view}"], np.eye(4), atol=1e-5)
        np.testing.assert_allclose(cam @ cams[f"camera_mat_inv_{view}"], np.eye(4), atol=1e-5)
        eye = cams[f"world_mat_inv_{view}"][:3, 3]
        assert np.linalg.norm(eye) == pytest.approx(2.732, abs=1e-4)
        assert math.degrees(math.asin(eye[1] / np.linalg.norm(eye))) == pytest.approx(30, abs=1e-3)
        assert math.atan2(eye[0], -eye[2]) % (2 * math.pi) == pytest.approx(nmr.view_angle(view), abs=1e-5)
        assert cam[0, 0] * 32 == pytest.approx(119.4, abs=0.05)


def _project(points, cams, view, size):
    p = cams[f"camera_mat_{view}"] @ cams[f"world_mat_{view}"] @ np.vstack([points.T, np.ones(len(points))])
    u, v = p[0] / p[2], p[1] / p[2]
    return (u + 1) * size / 2 - 0.5, (v + 1) * size / 2 - 0.5  # column, row (pixel centres)


def _dilate(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[1:] |= mask[:-1]
    out[:-1] |= mask[1:]
    out[:, 1:] |= out[:, :-1].copy()
    out[:, :-1] |= out[:, 1:].copy()
    return out


@pytest.mark.parametrize("index", range(13))
def test_projected_vertices_land_on_object_pixels(synth_zip, index):
    """Points on every part's surface, projected with cameras.npz, land on the object's pixels
    (within one pixel: parts thinner than a pixel may fall between the supersamples)."""
    obj = synth.make_object(index)
    images, cams = _images(synth_zip, obj), _cameras(synth_zip, obj)
    points = primitives.surface_points(obj, per_primitive=100)
    for view in range(0, 24, 5):
        mask = (images[view] < 250).any(-1)
        col, row = _project(points, cams, view, 64)
        assert col.min() > -0.5 and col.max() < 63.5 and row.min() > -0.5 and row.max() < 63.5
        rows, cols = np.rint(row).astype(int), np.rint(col).astype(int)
        assert _dilate(mask)[rows, cols].mean() > 0.985, (index, view)
        assert mask[rows, cols].mean() > 0.8, (index, view)


def _cross(o, a, b) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def _hull(points: np.ndarray) -> np.ndarray:
    """Convex hull (counter-clockwise in (x, y)) by the monotone chain."""
    pts = sorted(map(tuple, points))
    def half(seq):
        out = []
        for p in seq:
            while len(out) >= 2 and _cross(out[-2], out[-1], p) <= 0:
                out.pop()
            out.append(p)
        return out[:-1]
    return np.array(half(pts) + half(pts[::-1]))


def test_box_silhouette_is_exactly_its_projected_corners():
    """A lone box: pixels whose centre lies 0.4 px inside the projected hull are object, 0.4 px
    outside pure white. A half-pixel or flipped-axis convention error would break this."""
    box = primitives.Primitive("box", np.array([0.05, -0.02, 0.03]), primitives.rotation(yaw=0.5, roll=0.2),
                          np.array([0.35, 0.2, 0.25]), np.array([0.5, 0.3, 0.2]))
    images = render.render(primitives.SynthObject("02933112", "x", (box,)), image_size=64)
    cams = nmr.load_cameras(synth.cameras_npz(), member="c")
    signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
    corners = box.center + (signs * box.half) @ box.rotation.T
    grid_r, grid_c = np.mgrid[0:64, 0:64]
    for view in range(0, 24, 3):
        col, row = _project(corners, cams, view, 64)
        hull = _hull(np.stack([col, row], 1))
        edges = np.roll(hull, -1, axis=0) - hull
        normals = np.stack([edges[:, 1], -edges[:, 0]], 1) / np.linalg.norm(edges, axis=1, keepdims=True)
        # Signed distance of each pixel centre to the hull (positive = outside).
        dist = ((np.stack([grid_c, grid_r], -1)[..., None, :] - hull) * normals).sum(-1).max(-1)
        white = (images[view] == 255).all(-1)
        assert (dist < -0.4).sum() > 200 and (dist > 0.4).sum() > 2000
        assert (~white[dist < -0.4]).all() and white[dist > 0.4].all(), view


def test_white_background_and_objects_fill_the_frame(synth_zip):
    for index in range(13):
        images = _images(synth_zip, synth.make_object(index))
        assert (images[:, 0, 0] == 255).all() and (images[:, -1, -1] == 255).all()
        mask = (images < 250).any(-1)
        extent = max(np.ptp(np.nonzero(m)[axis]) for m in mask for axis in (0, 1))
        assert 40 <= extent <= 63, (index, extent)


def test_shading_varies_with_view_and_parts_have_colours(synth_zip):
    images = _images(synth_zip, synth.make_object(3))  # a car
    assert len(np.unique(images.reshape(-1, 3), axis=0)) > 50
    assert not np.array_equal(images[0], images[1])
    colours = {tuple(p.color) for p in synth.make_object(3).primitives}
    assert len(colours) >= 3


def test_same_category_objects_differ():
    a, b = synth.make_object(0), synth.make_object(13)
    assert a.synset == b.synset and a.object_id != b.object_id
    assert not np.array_equal(render.render(a, image_size=32), render.render(b, image_size=32))


def test_cli_synth(tmp_path, capsys):
    out = tmp_path / "d" / "NMR_Dataset.zip"
    assert main(["data", "synth", "--objects", "2", "--out", str(out), "--image-size", "32", "--workers", "1"]) == 0
    assert out.exists() and '"objects": 2' in capsys.readouterr().out
    assert main(["data", "synth", "--objects", "0", "--out", str(out)]) == 2


def test_full_disk_is_one_clear_error_and_leaves_nothing(full_disk, capsys):
    """9 objects (~320 KB) do not fit the 256 KiB disk: exit 2 with one line naming the zip,
    and no zip, complete or partial, under any name."""
    out = full_disk / "synth" / "NMR_Dataset.zip"
    code = main(["data", "synth", "--objects", "9", "--out", str(out), "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"{out}: no space left on the device" in err
    assert not [p for p in full_disk.rglob("*") if p.is_file()]
