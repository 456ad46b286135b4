"""Bounded reading of structured data: the one loader of YAML, JSON and npz bytes that a user or
another tool hands the pipeline, so that no such file exhausts memory, time or the stack.

    data = load_json(path, f"manifest {path}")          # configs: load_yaml(path, ...)
    value = loads_yaml(text, "--set train.lr=...")      # a string given on the command line
    check_tree(config, "the workflow config")           # a tree someone else parsed (Snakemake)
    arrays = load_npz(data, member, max_array_bytes=1 << 16)

Each bound is a one-line ViewFusionError naming the file: its size in bytes (a file is read
with a bounded read, so a 1 GB file never sits in memory); its nesting depth (deep `[[[...]]]`
is a RecursionError, thousands of lines, in every parser); and a YAML tree's size with its
aliases expanded. YAML aliases share one object, so a "billion laughs" document parses in microseconds,
and then every walk or copy of the tree (a merge, a schema's defaults, json.dumps for a
fingerprint) expands it into gigabytes. `check_tree` measures the expanded tree in linear time
(sizes of shared nodes are memoised) and refuses cycles, which no config or manifest has.
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from viewfusion.errors import ViewFusionError
from viewfusion.fsutil import wrong_kind

# A config, workflow overlay or --set value holds a few hundred values in a few KB.
MAX_YAML_BYTES = 4 << 20
# The largest JSON the pipeline writes is an evaluation manifest: ~65 MB for pixelNeRF's protocol
# on NMR (201,526 items), ~100 MB with 23 targets of 23 views per object.
MAX_JSON_BYTES = 256 << 20
# Nesting: configs are 4 deep, manifests 4; anything deeper than this was not written by us.
MAX_DEPTH = 32
# Values of a YAML tree with its aliases expanded (a config holds under 1,000); a string counts
# one value per STRING_UNIT characters, so aliases of one long string are no way around it.
MAX_YAML_VALUES = 1_000_000
STRING_UNIT = 64


def read_bounded(path: str | os.PathLike, limit: int, source: str) -> bytes:
    """The bytes of file `path`, refused (naming `source`, which names the file) when it holds more
    than `limit` bytes or is a directory. FileNotFoundError passes through: callers say what to do."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except IsADirectoryError:
        raise ViewFusionError(f"{source}: is a directory, expected a file") from None
    except NotADirectoryError as err:  # `shards/manifest.json` where shards is a file
        raise (wrong_kind(err) or ViewFusionError(f"{source}: unreadable ({err.strerror})")) from None
    except FileNotFoundError:
        raise
    except OSError as err:
        raise ViewFusionError(f"{source}: unreadable ({err.strerror or err})") from None
    if len(data) > limit:
        raise ViewFusionError(f"{source}: holds more than {limit:,} bytes, far more than any file of this "
                              "kind; refusing to read it")
    return data


def check_tree(value: Any, source: str, *, max_values: int = MAX_YAML_VALUES, max_depth: int = MAX_DEPTH) -> None:
    """Refuse a tree of dicts and lists nested deeper than `max_depth` or holding more than
    `max_values` values with shared nodes (YAML aliases) counted once per use; also a cycle."""
    if not isinstance(value, (dict, list)):
        return
    sizes: dict[int, tuple[int, int]] = {}  # id -> (values, height), of finished containers
    open_ids: set[int] = set()  # containers being walked: meeting one again is a cycle
    stack: list[tuple[Any, bool]] = [(value, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children = list(node.values()) if isinstance(node, dict) else node
        if done:
            values, height = len(node) if isinstance(node, dict) else 0, 0
            for child in children:
                size, child_height = sizes.get(id(child)) or (_scalar_size(child), 0)
                values, height = values + size, max(height, child_height)
            sizes[key] = (values + 1, height + 1)
            open_ids.discard(key)
            if values + 1 > max_values:
                raise ViewFusionError(f"{source}: holds more than {max_values:,} values once its YAML aliases "
                                      "are expanded (an alias bomb?); write the values out")
            if height + 1 > max_depth:
                raise ViewFusionError(f"{source}: nested more than {max_depth} levels deep; no config or "
                                      "manifest is, so it was not written for viewfusion")
            continue
        if key in sizes:
            continue
        if key in open_ids:
            raise ViewFusionError(f"{source}: a YAML alias refers to the value that holds it (a cycle)")
        open_ids.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if isinstance(c, (dict, list)))


def _scalar_size(value: Any) -> int:
    return 1 + len(value) // STRING_UNIT if isinstance(value, (str, bytes)) else 1


def _yaml_reason(err: yaml.YAMLError) -> str:
    """A YAML error on one line: the problem and where (PyYAML's message spans several lines)."""
    problem, mark = getattr(err, "problem", None), getattr(err, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(err).split())


def loads_yaml(text: str | bytes, source: str, *, loader: type = yaml.SafeLoader) -> Any:
    """YAML text -> a checked tree (see check_tree); `source` names it in every error."""
    if len(text) > MAX_YAML_BYTES:
        raise ViewFusionError(f"{source}: more than {MAX_YAML_BYTES:,} bytes of YAML; refusing to parse it")
    try:
        value = yaml.load(text, Loader=loader)  # noqa: S506 -- callers pass SafeLoader or BaseLoader only
    except yaml.YAMLError as err:
        raise ViewFusionError(f"{source}: not valid YAML: {_yaml_reason(err)}") from None
    except RecursionError:
        raise ViewFusionError(f"{source}: nested more than {MAX_DEPTH} levels deep; refusing it") from None
    check_tree(value, source)
    return value


def load_yaml(path: str | os.PathLike, source: str | None = None, *, loader: type = yaml.SafeLoader) -> Any:
    """The YAML file at `path`, bounded (size, depth, aliases). A binary file is a YAML error."""
    source = source or str(path)
    return loads_yaml(read_bounded(path, MAX_YAML_BYTES, source), source, loader=loader)


def loads_json(data: str | bytes, source: str) -> Any:
    """JSON text -> its value; ValueError (as json's) when invalid."""
    if len(data) > MAX_JSON_BYTES:
        raise ViewFusionError(f"{source}: more than {MAX_JSON_BYTES:,} bytes of JSON; refusing to parse it")
    try:
        # No walk of the result: JSON has no aliases, so its size bounds its tree, and a walk
        # costs 3x the parse of a manifest; what is too deep to parse is refused here.
        return json.loads(data)
    except RecursionError:
        raise ViewFusionError(f"{source}: nested too deep to read (thousands of levels); refusing it") from None


def load_json(path: str | os.PathLike, source: str | None = None) -> Any:
    """The JSON file at `path`, bounded: invalid JSON (or bytes that are not UTF-8) raise
    ValueError, a missing file FileNotFoundError, for the caller to word; the rest is a
    ViewFusionError naming `source`."""
    source = source or str(path)
    return loads_json(read_bounded(path, MAX_JSON_BYTES, source), source)


def load_npz(data: bytes, source: str, *, max_array_bytes: int) -> dict[str, np.ndarray]:
    """The arrays of npz bytes (no pickles), each refused above `max_array_bytes` as its zip entry
    declares it, as it inflates, and as its .npy header's shape says (numpy allocates the shape
    it reads before reading the data)."""
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for info in zf.infolist():
                if info.file_size > max_array_bytes:
                    raise ViewFusionError(f"{source}: array {info.filename} declares {info.file_size:,} bytes, "
                                          f"more than {max_array_bytes:,}; refusing it")
                with zf.open(info) as fh:
                    raw = fh.read(max_array_bytes + 1)
                if len(raw) > max_array_bytes:
                    raise ViewFusionError(f"{source}: array {info.filename} inflates past {max_array_bytes:,} "
                                          "bytes; refusing it")
                arrays[info.filename.removesuffix(".npy")] = _npy(raw, f"{source}: array {info.filename}")
    except (OSError, EOFError, zipfile.BadZipFile, ValueError) as err:
        raise ViewFusionError(f"{source}: not a readable npz ({err})") from None
    return arrays


def _npy(raw: bytes, source: str) -> np.ndarray:
    """One .npy's array, after checking that its header's shape fits in its bytes."""
    fh = io.BytesIO(raw)
    version = np.lib.format.read_magic(fh)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(fh)
    if dtype.hasobject:
        raise ValueError("object arrays (pickles) are refused")
    if math.prod(shape) * dtype.itemsize > len(raw):
        raise ViewFusionError(f"{source}: its header declares shape {shape}, more than its {len(raw):,} bytes hold")
    fh.seek(0)
    return np.lib.format.read_array(fh, allow_pickle=False)
