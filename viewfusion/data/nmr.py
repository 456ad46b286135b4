"""The NMR ShapeNet layout: constants and safe zip reading (checked by `viewfusion.data.verify`).

Inside the zip everything sits under `NMR_Dataset/`: `metadata.yaml`, one folder per synset with
`{train,val,test}.lst` and `softras_{train,val,test}.lst`, and per object
`image/0000.png .. image/0023.png` (64x64 RGB) and `cameras.npz` (`world_mat_i`, `camera_mat_i`
and their `_inv`). Members are read straight from the zip and never extracted; a member name
with `..` or a leading `/` (or a drive letter) rejects the whole zip, since no honest NMR zip
has one and a later extraction by another tool could write outside its folder.

Camera convention (the NMR/DVR one, reproduced exactly by `viewfusion data synth`): the world is
y-up; `world_mat_i` maps world to camera coordinates (x right, y down, z forward, OpenCV style);
`camera_mat_i` maps camera coordinates to pixel coordinates in [-1, 1]:
`p = camera_mat @ world_mat @ [X, 1]`, `u = p[0] / p[2]` (column, -1 = left edge),
`v = p[1] / p[2]` (row, -1 = top edge). Pixel column j of W has its centre at `(2j + 1) / W - 1`.
"""

from __future__ import annotations

import io
import math
import re
import struct
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Self

import numpy as np
import yaml

from viewfusion.bounded import load_npz, loads_yaml
from viewfusion.errors import ViewFusionError
from viewfusion.fsutil import plain_name
from viewfusion.limits import MAX_IMAGE_SIZE, MAX_SEED, NUM_VIEWS  # noqa: F401  (nmr.NUM_VIEWS etc.: the dataset's facts)

# synset -> short name, in the NMR / ShapeNet order used by every table of the paper.
SYNSETS: dict[str, str] = {
    "02691156": "airplane",
    "02828884": "bench",
    "02933112": "cabinet",
    "02958343": "car",
    "03001627": "chair",
    "03211117": "display",
    "03636649": "lamp",
    "03691459": "loudspeaker",
    "04090263": "rifle",
    "04256520": "sofa",
    "04379243": "table",
    "04401088": "telephone",
    "04530566": "vessel",
}
CATEGORIES: dict[str, str] = {name: synset for synset, name in SYNSETS.items()}
# ShapeNet's WordNet names, as metadata.yaml spells them.
SYNSET_NAMES: dict[str, str] = {
    "02691156": "airplane,aeroplane,plane",
    "02828884": "bench",
    "02933112": "cabinet",
    "02958343": "car,auto,automobile,machine,motorcar",
    "03001627": "chair",
    "03211117": "display,video display",
    "03636649": "lamp",
    "03691459": "loudspeaker,speaker,speaker unit,loudspeaker system,speaker system",
    "04090263": "rifle",
    "04256520": "sofa,couch,lounge",
    "04379243": "table",
    "04401088": "telephone,phone,telephone set",
    "04530566": "vessel,watercraft",
}

VIEW_STEP = 2.0 * math.pi / NUM_VIEWS  # radians between neighbouring views
IMAGE_SIZE = 64
ELEVATION_DEG = 30.0
CAMERA_DISTANCE = 2.732
FOV_DEG = 30.0
# Focal length in [-1, 1] pixel units (camera_mat[0, 0]); times W/2 gives pixels (119.4 at 64).
FOCAL_NDC = 1.0 / math.tan(math.radians(FOV_DEG) / 2)

ROOT = "NMR_Dataset/"
SPLITS = ("train", "val", "test")
# Which split lists to read: ViewFusion's own lists or the SoftRas ones (pixelNeRF, SRT).
LIST_PREFIXES = {"viewfusion": "", "softras": "softras_"}
CAMERA_NAMES = ("world_mat", "camera_mat", "world_mat_inv", "camera_mat_inv")

# The most one member of an NMR zip may hold, generous but finite (NMR itself: PNGs of 1-5 KB,
# cameras.npz of ~25 KB holding 4x4 float matrices, split lists under 100 KB, metadata.yaml of
# 1 KB). A member declaring or inflating to more is refused before it is read whole: a 3 MB zip
# can inflate to gigabytes. A PNG may hold 16-bit RGBA pixels uncompressed plus 1 MiB of other
# chunks (an ICC profile, text); MAX_IMAGE_SIZE (viewfusion.limits) bounds the image side.
MAX_CAMERAS_BYTES = 4 << 20
MAX_CAMERA_ARRAY_BYTES = 64 << 10
MAX_LIST_BYTES = 16 << 20
MAX_METADATA_BYTES = 1 << 20

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_DRIVE = re.compile(r"^[A-Za-z]:")
_NPZ_NAME = re.compile(rb"((?:world|camera)_mat(?:_inv)?_\d+)\.npy")


def check_count(value, flag: str, *, minimum: int = 1, maximum: int | None = None) -> None:
    """A data command's integer setting (`--objects`, `--seed`, ...) must be an int in
    minimum..maximum: a clear error up front instead of a numpy ValueError, a silent no-op or an
    allocation of terabytes deep inside."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ViewFusionError(f"{flag} must be an integer >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ViewFusionError(f"{flag} must be at most {maximum}, got {value!r}")


def png_limit(image_size: int) -> int:
    """The most bytes a PNG of `image_size` x `image_size` may hold (see MAX_IMAGE_SIZE)."""
    return 8 * image_size * (image_size + 1) + (1 << 20)


def member_limit(name: str, *, image_size: int = IMAGE_SIZE) -> int:
    """The most bytes member `name` of an NMR zip may hold, by its kind."""
    if name.endswith(".png"):
        return png_limit(image_size)
    if name.endswith(".lst"):
        return MAX_LIST_BYTES
    if name.endswith(".yaml"):
        return MAX_METADATA_BYTES
    return MAX_CAMERAS_BYTES


def view_angle(view: int) -> float:
    """Azimuth of NMR view `view` in radians (view i sits at 15*i degrees)."""
    return VIEW_STEP * view


def view_distance(a: int, b: int) -> int:
    """Circular distance between NMR views a and b in view steps (0..NUM_VIEWS // 2)."""
    return min((a - b) % NUM_VIEWS, (b - a) % NUM_VIEWS)


def focal_px(*, image_size: int = IMAGE_SIZE) -> float:
    """Focal length in pixels at `image_size` (119.4 at 64)."""
    return FOCAL_NDC * image_size / 2


def object_key(synset: str, object_id: str) -> str:
    """Webdataset key of an object: `{synset}_{object_id}` (no dots or slashes allowed)."""
    return f"{synset}_{object_id}"


def split_key(key: str) -> tuple[str, str]:
    """Inverse of `object_key` (synsets never contain `_`, object ids may)."""
    synset, _, object_id = key.partition("_")
    return synset, object_id


def resolve_category(name: str) -> str:
    """A short name (`car`) or synset id (`02958343`) -> synset id; anything else is an error."""
    if name in SYNSETS:
        return name
    if name in CATEGORIES:
        return CATEGORIES[name]
    raise ViewFusionError(
        f"unknown category {name!r}; expected one of {', '.join(CATEGORIES)} or a synset id"
    )


def image_member(synset: str, object_id: str, view: int) -> str:
    return f"{ROOT}{synset}/{object_id}/image/{view:04d}.png"


def cameras_member(synset: str, object_id: str) -> str:
    return f"{ROOT}{synset}/{object_id}/cameras.npz"


def list_member(synset: str, split: str, *, lists: str = "viewfusion") -> str:
    return f"{ROOT}{synset}/{LIST_PREFIXES[lists]}{split}.lst"


def check_member_name(name: str) -> None:
    """Reject member names that could escape a folder if anyone ever extracted them."""
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or _DRIVE.match(name) or ".." in parts:
        raise ViewFusionError(f"unsafe member name {name!r} (absolute or with '..'); refusing this zip")


def check_png(data: bytes, *, member: str, image_size: int = IMAGE_SIZE) -> None:
    """Cheap integrity check of a PNG without decoding it: signature, chunk CRCs, IHDR size.

    Every chunk's CRC is verified, so any flipped or missing byte is caught; the pixels are not
    unfiltered (sharding must stay close to copy speed; `verify` and the loaders decode fully).
    """
    view = memoryview(data)
    if data[:8] != _PNG_SIGNATURE:
        raise ViewFusionError(f"{member}: not a PNG file (bad signature)")
    pos, size, seen_idat = 8, None, False
    while True:
        if pos + 12 > len(data):
            raise ViewFusionError(f"{member}: truncated PNG (no IEND chunk)")
        (length,) = struct.unpack_from(">I", data, pos)
        end = pos + 8 + length
        if end + 4 > len(data):
            raise ViewFusionError(f"{member}: truncated PNG chunk at byte {pos}")
        if zlib.crc32(view[pos + 4 : end]) != struct.unpack_from(">I", data, end)[0]:
            raise ViewFusionError(f"{member}: corrupt PNG (CRC mismatch in chunk at byte {pos})")
        kind = data[pos + 4 : pos + 8]
        if kind == b"IHDR":
            size = struct.unpack_from(">II", data, pos + 8)
        seen_idat |= kind == b"IDAT"
        if kind == b"IEND":
            break
        pos = end + 4
    if size is None or not seen_idat:
        raise ViewFusionError(f"{member}: corrupt PNG (missing IHDR or IDAT)")
    if size != (image_size, image_size):
        raise ViewFusionError(
            f"{member}: image is {size[0]}x{size[1]}, expected {image_size}x{image_size}"
        )


def decode_png(data: bytes, *, member: str, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """Fully decode a PNG to (H, W, 3) uint8 RGB, with errors that name the member."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            array = np.asarray(im.convert("RGB") if im.mode != "RGB" else im)
    except (OSError, SyntaxError, ValueError, zlib.error) as err:
        raise ViewFusionError(f"{member}: unreadable PNG ({err})") from None
    if array.shape != (image_size, image_size, 3):
        raise ViewFusionError(
            f"{member}: image is {array.shape[1]}x{array.shape[0]}, expected {image_size}x{image_size}"
        )
    return array


def _npz_names(data: bytes) -> list[str] | None:
    """Array names of an npz from its central directory only (a full parse costs ~7x more)."""
    eocd = data.rfind(b"PK\x05\x06", max(0, len(data) - 22 - 65535))
    if eocd < 0 or eocd + 22 > len(data):
        return None
    (cd_offset,) = struct.unpack_from("<I", data, eocd + 16)
    if cd_offset >= eocd:  # zip64 or damaged: let the caller fall back to zipfile
        return None
    return [m.decode() for m in _NPZ_NAME.findall(data, cd_offset, eocd)]


def check_cameras(data: bytes, *, member: str) -> None:
    """Check that an npz holds the four matrices of all 24 views, each once (names only, no decoding)."""
    names = _npz_names(data)
    if names is None:
        try:
            names = [n.removesuffix(".npy") for n in zipfile.ZipFile(io.BytesIO(data)).namelist()]
        except zipfile.BadZipFile as err:
            raise ViewFusionError(f"{member}: not a readable npz ({err})") from None
    counts = Counter(names)
    twice = next((name for name, count in counts.items() if count > 1), None)
    if twice is not None:  # numpy would load the last copy
        raise ViewFusionError(f"{member}: camera {twice} appears twice")
    for view in range(NUM_VIEWS):
        for name in CAMERA_NAMES:
            if f"{name}_{view}" not in counts:
                raise ViewFusionError(f"{member}: camera {name}_{view} missing")


def load_cameras(data: bytes, *, member: str) -> dict[str, np.ndarray]:
    """Decode an NMR cameras.npz into {name: array}; every matrix must be 4x4 (3x4 world ok)."""
    check_cameras(data, member=member)
    cameras = load_npz(data, member, max_array_bytes=MAX_CAMERA_ARRAY_BYTES)
    for name, array in cameras.items():
        if name.startswith(CAMERA_NAMES) and array.shape not in {(4, 4), (3, 4)}:
            raise ViewFusionError(f"{member}: {name} has shape {array.shape}, expected 4x4")
    return cameras


@dataclass(frozen=True)
class RawObject:
    """The members of one object as stored in the zip (PNG bytes, npz bytes), checked."""

    synset: str
    object_id: str
    pngs: tuple[bytes, ...]
    cameras: bytes

    @property
    def key(self) -> str:
        return object_key(self.synset, self.object_id)


class NMRZip:
    """Read-only access to an NMR-format zip; every failure names the zip member.

        with NMRZip(path) as nmr:
            for object_id in nmr.split_list("02958343", "test"):
                obj = nmr.read_object("02958343", object_id)
    """

    def __init__(self, path, *, image_size: int = IMAGE_SIZE):
        self.path = str(path)
        self.image_size = image_size
        try:
            self._zip = zipfile.ZipFile(self.path)
        except FileNotFoundError:
            raise ViewFusionError(f"{self.path}: no such file") from None
        except IsADirectoryError:
            raise ViewFusionError(f"{self.path}: is a directory, expected the NMR_Dataset.zip file") from None
        except (zipfile.BadZipFile, OSError) as err:
            raise ViewFusionError(
                f"{self.path}: not a complete zip ({err}); a truncated download? "
                "download it again (`viewfusion data download` resumes)"
            ) from None
        self._names = set()
        for name in self._zip.namelist():
            check_member_name(name)
            if name in self._names:  # zipfile would read the last copy: which one is meant is undefined
                raise ViewFusionError(f"{self.path}: member {name} appears twice; download or rebuild the zip")
            self._names.add(name)
        self.metadata = self._read_metadata()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._zip.close()

    def has(self, member: str) -> bool:
        return member in self._names

    def read(self, member: str) -> bytes:
        """A member's bytes, refused when its size (as the zip declares it, and as it inflates:
        a header can lie) is beyond what NMR holds (member_limit)."""
        if member not in self._names:
            raise ViewFusionError(f"{self.path}: member {member} missing")
        limit = member_limit(member, image_size=self.image_size)
        info = self._zip.getinfo(member)
        if info.file_size > limit:
            raise ViewFusionError(f"{self.path}: member {member} declares {info.file_size:,} bytes, more than "
                                  f"{limit:,} (no NMR file is this large); refusing this zip")
        try:
            with self._zip.open(info) as fh:
                data = fh.read(limit + 1)
        except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError) as err:
            raise ViewFusionError(f"{self.path}: member {member} is unreadable ({err})") from None
        if len(data) > limit:
            raise ViewFusionError(f"{self.path}: member {member} inflates past {limit:,} bytes (no NMR file is "
                                  "this large); refusing this zip")
        return data

    def _read_metadata(self) -> dict[str, dict]:
        member = ROOT + "metadata.yaml"
        if member not in self._names:
            raise ViewFusionError(f"{self.path}: {member} missing; not an NMR_Dataset zip")
        # Every scalar as a string: in plain YAML an unquoted synset such as 03001627 (chair)
        # is an octal integer (787351), and an unknown category would be reported.
        metadata = loads_yaml(self.read(member), f"{self.path}: {member}", loader=yaml.BaseLoader)
        if not isinstance(metadata, dict):
            raise ViewFusionError(f"{self.path}: {member} is not a mapping synset -> info")
        for synset in metadata:
            if str(synset) not in SYNSETS:
                raise ViewFusionError(f"{self.path}: {member} names unknown category {synset!r}")
        missing = sorted(set(SYNSETS) - {str(s) for s in metadata})
        if missing:
            raise ViewFusionError(f"{self.path}: {member} lacks categories {', '.join(missing)}")
        return {str(k): v for k, v in metadata.items()}

    def split_list(self, synset: str, split: str, *, lists: str = "viewfusion") -> list[str]:
        """Object ids of one category's split list, in file order (blank lines skipped)."""
        member = list_member(synset, split, lists=lists)
        lines = self.read(member).decode("utf-8", errors="replace").splitlines()
        ids = [line.strip() for line in lines if line.strip()]
        for object_id in ids:
            # Ids name zip members and, inside keys, tar members and sample files: plain names
            # only, and no '.' (webdataset splits keys there) or leading '_' (split_key).
            plain_name(object_id, f"{self.path}: {member} object id")
            if "." in object_id or object_id.startswith("_"):
                raise ViewFusionError(f"{self.path}: {member} lists a bad object id {object_id!r}")
        return ids

    def read_object(self, synset: str, object_id: str) -> RawObject:
        """The 24 PNGs and cameras.npz of one object, integrity-checked but not decoded."""
        pngs = []
        for view in range(NUM_VIEWS):
            member = image_member(synset, object_id, view)
            data = self.read(member)
            check_png(data, member=f"{self.path}: {member}", image_size=self.image_size)
            pngs.append(data)
        member = cameras_member(synset, object_id)
        if member not in self._names:
            raise ViewFusionError(f"{self.path}: object {synset}/{object_id}: camera file {member} missing")
        cameras = self.read(member)
        check_cameras(cameras, member=f"{self.path}: {member}")
        return RawObject(synset, object_id, tuple(pngs), cameras)
