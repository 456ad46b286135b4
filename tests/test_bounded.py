"""The bounded loader (viewfusion.bounded): YAML and JSON size, depth and alias expansion, npz
arrays whose zip entry or .npy header claims more than they may hold, files of the wrong kind."""

from __future__ import annotations

import io
import time
import zipfile

import numpy as np
import pytest
import yaml

from viewfusion import bounded
from viewfusion.data import nmr
from viewfusion.errors import ViewFusionError


def laughs(levels: int) -> str:
    parts = ["&a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    parts += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "[" + ", ".join(parts) + "]"


def test_an_alias_bomb_is_measured_without_expanding_it():
    start = time.perf_counter()
    with pytest.raises(ViewFusionError, match=r"^x: holds more than 1,000,000 values once its YAML aliases"):
        bounded.loads_yaml(laughs(12), "x")  # 9^12 = 2.8e11 values expanded
    assert time.perf_counter() - start < 1.0


def test_aliases_within_the_limit_load_and_count_every_use():
    value = bounded.loads_yaml(laughs(6), "x")  # 9^5 * 9 = 531,441 leaves: allowed
    assert value[5][0][0][0][0][0][0] == "lol"
    with pytest.raises(ViewFusionError, match="1,000 values"):
        bounded.check_tree(value, "x", max_values=1000)


def test_aliases_of_one_long_string_count_its_length():
    text = "s: &s " + "x" * 100_000 + "\nl: [" + ", ".join(["*s"] * 1000) + "]\n"
    with pytest.raises(ViewFusionError, match="aliases are expanded"):
        bounded.loads_yaml(text, "x")  # 1000 x 100 KB = 100 MB once written out


def test_a_cycle_is_refused():
    with pytest.raises(ViewFusionError, match="refers to the value that holds it"):
        bounded.loads_yaml("&a [1, *a]", "x")


@pytest.mark.parametrize("depth", [bounded.MAX_DEPTH + 1, 100_000])
def test_deep_yaml_is_one_line(depth):
    with pytest.raises(ViewFusionError, match="^x: nested more than 32 levels deep") as err:
        bounded.loads_yaml("[" * depth + "]" * depth, "x")
    assert "\n" not in str(err.value)


def test_deep_json_is_one_line():
    with pytest.raises(ViewFusionError, match="^x: nested too deep to read"):
        bounded.loads_json("[" * 100_000 + "]" * 100_000, "x")
    assert bounded.loads_json('{"a": [[1]]}', "x") == {"a": [[1]]}


def test_invalid_yaml_is_one_line_with_its_position():
    expected = r"^x: not valid YAML: expected ',' or '\]', but got '<stream end>' \(line 3, column 1\)$"
    with pytest.raises(ViewFusionError, match=expected):
        bounded.loads_yaml("a: 1\nb: [c\n", "x")


def test_files_are_read_with_a_bound(tmp_path):
    path = tmp_path / "big.json"
    path.write_bytes(b" " * 101)
    assert bounded.read_bounded(path, 101, "f") == b" " * 101
    with pytest.raises(ViewFusionError, match="^f: holds more than 100 bytes"):
        bounded.read_bounded(path, 100, "f")
    with pytest.raises(ViewFusionError, match="^d: is a directory, expected a file$"):
        bounded.read_bounded(tmp_path, 100, "d")
    with pytest.raises(ViewFusionError, match=f"^{path}: is a file, expected a directory$"):
        bounded.read_bounded(path / "x.json", 100, "d")
    with pytest.raises(FileNotFoundError):
        bounded.read_bounded(tmp_path / "none", 100, "f")


def test_a_binary_file_is_a_yaml_error_not_a_unicode_error(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(bytes(range(256)))
    with pytest.raises(ViewFusionError, match=f"^{path}: not valid YAML"):
        bounded.load_yaml(path)


def _npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def test_npz_arrays_load_within_their_bound():
    arrays = bounded.load_npz(_npz(a=np.eye(4), b=np.arange(3)), "c.npz", max_array_bytes=1024)
    assert np.array_equal(arrays["a"], np.eye(4)) and list(arrays["b"]) == [0, 1, 2]


def test_an_npz_array_that_inflates_past_its_bound_is_refused():
    data = _npz(a=np.zeros(10_000_000, np.uint8))  # 10 MB of zeros, 10 KB deflated
    assert len(data) < 100_000
    with pytest.raises(ViewFusionError, match=r"^c.npz: array a.npy declares 10,000,128 bytes, more than 65,536"):
        bounded.load_npz(data, "c.npz", max_array_bytes=65_536)


def test_an_npy_header_claiming_a_huge_shape_is_refused_before_allocating():
    member = io.BytesIO()  # 16 bytes of data under a header that says 80 TB
    np.lib.format.write_array_header_1_0(member, {"descr": "<f8", "fortran_order": False, "shape": (10**13,)})
    raw = member.getvalue() + bytes(16)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("a.npy", raw)
    with pytest.raises(ViewFusionError, match=r"header declares shape \(10000000000000,\), more than its"):
        bounded.load_npz(buffer.getvalue(), "c.npz", max_array_bytes=65_536)


def test_camera_matrices_go_through_the_bounded_reader():
    from viewfusion.data.synth import cameras_npz

    cameras = nmr.load_cameras(cameras_npz(), member="cameras.npz")
    assert cameras["world_mat_0"].shape == (4, 4)
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        for view in range(nmr.NUM_VIEWS):
            for name in nmr.CAMERA_NAMES:
                zf.writestr(f"{name}_{view}.npy", bytes(1_000_000 if (view, name) == (0, "world_mat") else 10))
    with pytest.raises(ViewFusionError, match="world_mat_0.npy declares 1,000,000 bytes"):
        nmr.load_cameras(bomb.getvalue(), member="cameras.npz")


def test_the_metadata_member_is_read_with_the_bounded_yaml_loader(synth_zip, edit_zip, tmp_path):
    bomb = edit_zip(synth_zip, tmp_path / "z.zip",
                    replace={"metadata.yaml": f"02691156: {laughs(9)}\n".encode()})
    with pytest.raises(ViewFusionError, match="metadata.yaml: holds more than 1,000,000 values"):
        nmr.NMRZip(bomb)


def test_yaml_loader_keeps_base_loader_strings():
    assert bounded.loads_yaml("03001627: {id: 03001627}", "m", loader=yaml.BaseLoader) == {
        "03001627": {"id": "03001627"}}
