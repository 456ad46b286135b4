"""`viewfusion data manifest`: a deterministic, seeded list of evaluation targets for one view count.

    viewfusion data manifest --shards data/shards --split test --views 3 --seed 0 \\
        --max-objects 100 --targets-per-object 2 --out manifests/test-v3.json
    viewfusion data manifest --shards data/shards-softras --split test --views 1 --seed 0 \\
        --viewlist src_dvr.txt --out manifests/test-pixelnerf.json

Random mode: objects are chosen per category in a seeded hash order and interleaved across
categories (so `--max-objects 26` takes 2 of each of 13); each object's targets and each
target's conditioning order come from generators seeded by (seed, object[, target]) only, so the
manifests of different `--views` share objects, targets and noise seeds, and their conditioning
sets are nested (the 3 views of v3 are the first 3 of v6). Conditioning views never include the
target. `--views` goes from 1 to 23 (beyond the trained 6 for extrapolation).

Viewlist mode (pixelNeRF's one-view protocol): a file of `synset object_id view` lines fixes the
source view of each object; the other 23 views are its targets (`--targets-per-object` keeps a
seeded subset). Objects of the split without a line are skipped and counted in the manifest.

Output (docs/FORMATS.md, "Evaluation manifests"): `{"split", "seed", "view_count", "source",
"items": [{"item", "key", "synset", "category", "object_id", "target_view", "cond_views",
"view_count", "seed"}], ...}`; `item` = `{key}-t{target:02d}-v{n}-{k}` (k = index of the target
within its object) is unique and file-name safe, `seed` is the per-target noise seed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

from viewfusion.bounded import load_json, read_bounded
from viewfusion.data import nmr
from viewfusion.data.shardmanifest import read_shard_manifest
from viewfusion.errors import ViewFusionError
from viewfusion.fsutil import atomic_write_json, plain_name, sha256_file

FORMAT = "viewfusion-eval-manifest"
FORMAT_VERSION = 1
# The `source` of Figure 2's manifest (viewfusion.evaluate.figure_samples), which shows the view weights at
# every target, the input views included: the one kind whose targets may be conditioning views.
FIGURE_SOURCE = "figure"
# Where the workflow keeps a manifest, per evaluation.protocol (the rules' output patterns too).
WORKFLOW_MANIFESTS = {"official": "results/manifests/{shard_set}/{split}-v{views}.json",
                      "pixelnerf": "results/manifests/{shard_set}/{split}-pixelnerf-v{views}.json"}


def workflow_manifest(protocol: str, *, shard_set: str, split: str, views: int | str) -> str:
    """The workflow's manifest of one shard set, split and view count (relative to its root)."""
    return WORKFLOW_MANIFESTS[protocol].format(shard_set=shard_set, split=split, views=views)


def key_int(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")


def choose_objects(keys: list[str], *, seed: int, max_objects: int | None) -> list[str]:
    """Up to `max_objects` keys, balanced over categories, in a seeded order."""
    if max_objects is None or max_objects >= len(keys):
        return list(keys)
    per_category: dict[str, list[str]] = {}
    for key in sorted(keys, key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).digest()):
        per_category.setdefault(nmr.split_key(key)[0], []).append(key)
    queues = [per_category[s] for s in nmr.SYNSETS if s in per_category]
    chosen: list[str] = []
    for rank in range(max(map(len, queues))):
        chosen += [queue[rank] for queue in queues if rank < len(queue)]
    chosen = set(chosen[:max_objects])
    return [key for key in keys if key in chosen]  # keep the shards' (manifest) order


def _noise_seed(seed: int, key: str, target: int) -> int:
    return int(np.random.SeedSequence([seed, key_int(key), target, 1]).generate_state(1)[0] & 0x7FFFFFFF)


def item_name(key: str, target: int, view_count: int, k: int) -> str:
    """The one format of a manifest item's name (unique, file-name safe): k is the index of the
    target within its object."""
    return f"{key}-t{target:02d}-v{view_count}-{k}"


def item_labels(item: dict) -> dict:
    """The labels of a target that metrics rows carry (synset, category, object_id, view_count),
    derived from its key and cond_views: fields its item tag (viewfusion.evaluate.provenance) covers, so
    that a manifest edited after sampling cannot score old images under new labels."""
    synset, object_id = nmr.split_key(item["key"])
    return {"synset": synset, "category": nmr.SYNSETS.get(synset, synset), "object_id": object_id,
            "view_count": len(item["cond_views"])}


def _item(key: str, target: int, cond: list[int], k: int, seed: int) -> dict:
    labels = item_labels({"key": key, "cond_views": cond})
    return {"item": item_name(key, target, len(cond), k), "key": key, "synset": labels["synset"],
            "category": labels["category"], "object_id": labels["object_id"], "target_view": target,
            "cond_views": cond, "view_count": labels["view_count"], "seed": _noise_seed(seed, key, target)}


def random_items(keys: list[str], *, view_count: int, seed: int, targets_per_object: int) -> list[dict]:
    """Items for the random protocol: per object `targets_per_object` seeded targets."""
    items = []
    for key in keys:
        targets = np.random.default_rng([seed, key_int(key)]).permutation(nmr.NUM_VIEWS)[:targets_per_object]
        for k, target in enumerate(int(t) for t in targets):
            others = [v for v in range(nmr.NUM_VIEWS) if v != target]
            order = np.random.default_rng([seed, key_int(key), target]).permutation(others)
            items.append(_item(key, target, [int(v) for v in order[:view_count]], k, seed))
    return items


def read_viewlist(path) -> dict[str, int]:
    """{key: source view} from a pixelNeRF-style list (`synset object_id view` per line)."""
    sources: dict[str, int] = {}
    try:
        text = read_bounded(path, nmr.MAX_LIST_BYTES, f"--viewlist {path}").decode()
    except FileNotFoundError:
        raise ViewFusionError(f"--viewlist {path}: no such file") from None
    except UnicodeDecodeError:
        raise ViewFusionError(f"--viewlist {path}: not a text file (expected `synset object_id view` lines)") from None
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3 or fields[0] not in nmr.SYNSETS or not fields[2].isdigit() \
                or int(fields[2]) >= nmr.NUM_VIEWS:
            raise ViewFusionError(f"{path}:{number}: expected `synset object_id view` with a known "
                                  f"synset and a view in 0..23, got {line.strip()!r}")
        plain_name(fields[1], f"{path}:{number}: object id")  # it becomes part of sample file names
        sources[nmr.object_key(fields[0], fields[1])] = int(fields[2])
    return sources


def viewlist_items(keys: list[str], sources: dict[str, int], *, seed: int,
                   targets_per_object: int | None) -> list[dict]:
    """Items for the one-view protocol: the listed source view conditions every other view."""
    items = []
    for key in keys:
        source = sources[key]
        targets = [v for v in range(nmr.NUM_VIEWS) if v != source]
        if targets_per_object is not None:
            picked = np.random.default_rng([seed, key_int(key)]).permutation(targets)[:targets_per_object]
            targets = sorted(int(t) for t in picked)
        items += [_item(key, target, [source], k, seed) for k, target in enumerate(targets)]
    return items


def make_manifest(shard_dir, *, split: str = "test", view_count: int = 1, seed: int = 0,
                  max_objects: int | None = None, targets_per_object: int | None = None,
                  viewlist=None) -> dict:
    """The evaluation manifest as a dict (see the module docstring)."""
    nmr.check_count(seed, "--seed", minimum=0, maximum=nmr.MAX_SEED)  # numpy refuses negative seeds
    if not 1 <= view_count < nmr.NUM_VIEWS:
        raise ViewFusionError(f"--views must be in 1..{nmr.NUM_VIEWS - 1}, got {view_count}")
    if targets_per_object is not None and not 1 <= targets_per_object < nmr.NUM_VIEWS:
        raise ViewFusionError(f"--targets-per-object must be in 1..{nmr.NUM_VIEWS - 1}, got {targets_per_object}")
    if max_objects is not None and max_objects < 1:
        raise ViewFusionError(f"--max-objects must be positive, got {max_objects}")
    shards = read_shard_manifest(shard_dir)
    if split not in shards["splits"]:
        raise ViewFusionError(f"{shard_dir}: no split {split!r} (have {', '.join(shards['splits'])})")
    keys = shards["splits"][split]["objects"]
    out = {"format": FORMAT, "format_version": FORMAT_VERSION, "split": split, "seed": seed,
           "view_count": view_count, "source": "random" if viewlist is None else "viewlist",
           "shards": str(shard_dir), "max_objects": max_objects, "targets_per_object": targets_per_object}
    if viewlist is None:
        chosen = choose_objects(keys, seed=seed, max_objects=max_objects)
        items = random_items(chosen, view_count=view_count, seed=seed, targets_per_object=targets_per_object or 1)
    else:
        if view_count != 1:
            raise ViewFusionError("--viewlist is the one-view protocol: use it with --views 1")
        sources = read_viewlist(viewlist)
        matched = [key for key in keys if key in sources]
        if not matched:
            raise ViewFusionError(f"{viewlist}: none of its objects is in the {split} split of {shard_dir}")
        chosen = choose_objects(matched, seed=seed, max_objects=max_objects)
        items = viewlist_items(chosen, sources, seed=seed, targets_per_object=targets_per_object)
        out["viewlist"] = {"path": str(viewlist), "sha256": sha256_file(viewlist),
                           "lines": len(sources), "matched": len(matched),
                           "split_objects_without_line": len(keys) - len(matched)}
    out["objects"] = len(chosen)
    out["items"] = items
    return out


# ------------------------------------------------------------------------------------ reading

_TOP_KEYS = ("split", "seed", "items")
_ITEM_KEYS = ("item", "key", "target_view", "cond_views", "seed")
_REGENERATE = "regenerate it with `viewfusion data manifest`"


def read_manifest(path) -> dict:
    """The evaluation manifest at `path`, checked: the one reader every stage uses, so a
    hand-edited or foreign file fails here with the file and item named, not deep in sampling.

    Item and key names must be plain file names (they become sample file names), views ints in
    [0, NUM_VIEWS), cond_views non-empty, distinct, no more than an object has and (except in
    Figure 2's manifest, FIGURE_SOURCE) without the target, seeds ints >= 0, item names unique; an
    item's labels (synset, category, object_id, view_count), where given, must be what its key and
    cond_views say (`item_labels`)."""
    where = f"manifest {path}"
    manifest = _load_json(path, where)
    missing = [key for key in _TOP_KEYS if key not in manifest]
    if missing:
        raise ViewFusionError(f"{where}: no {', '.join(missing)}; {_REGENERATE}")
    if "format" in manifest and (manifest["format"], manifest.get("format_version")) != (FORMAT, FORMAT_VERSION):
        raise ViewFusionError(f"{where}: not a {FORMAT} v{FORMAT_VERSION} file; {_REGENERATE}")
    _check_seed(manifest["seed"], f"{where}: seed")
    items = manifest["items"]
    if not isinstance(items, list) or not items:
        raise ViewFusionError(f"{where}: items must be a non-empty list; {_REGENERATE}")
    seen: set[str] = set()
    target_may_condition = manifest.get("source") == FIGURE_SOURCE
    for index, item in enumerate(items):
        _check_item(item, f"{where}: items[{index}]", target_may_condition=target_may_condition)
        _check_labels(item, f"{where}: items[{index}]")
        if item["item"] in seen:
            raise ViewFusionError(f"{where}: items[{index}]: duplicate item name {item['item']!r}; {_REGENERATE}")
        seen.add(item["item"])
    return manifest


def _load_json(path, where: str) -> dict:
    try:
        data = load_json(path, where)
    except FileNotFoundError:
        raise ViewFusionError(f"{where}: no such file; create it with `viewfusion data manifest`") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ViewFusionError(f"{where}: unreadable JSON ({err}); {_REGENERATE}") from None
    if not isinstance(data, dict):
        raise ViewFusionError(f"{where}: not a JSON object; {_REGENERATE}")
    return data


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is no view


def _check_seed(value, where: str) -> None:
    if not _is_int(value) or not 0 <= value <= nmr.MAX_SEED:  # sampling seeds torch with an int64
        raise ViewFusionError(f"{where}: {value!r} is not an int in 0..2^63-1; {_REGENERATE}")


def _check_view(value, where: str) -> None:
    if not _is_int(value) or not 0 <= value < nmr.NUM_VIEWS:
        raise ViewFusionError(f"{where}: {value!r} is not a view in 0..{nmr.NUM_VIEWS - 1}; {_REGENERATE}")


def _check_item(item, where: str, *, target_may_condition: bool = False) -> None:
    if not isinstance(item, dict):
        raise ViewFusionError(f"{where}: not a JSON object; {_REGENERATE}")
    missing = [key for key in _ITEM_KEYS if key not in item]
    if missing:
        raise ViewFusionError(f"{where}: no {', '.join(missing)}; {_REGENERATE}")
    plain_name(item["item"], f"{where}: item")
    where = f"{where} ({item['item']})"
    plain_name(item["key"], f"{where}: key")
    _check_view(item["target_view"], f"{where}: target_view")
    if not isinstance(item["cond_views"], list) or not item["cond_views"]:
        raise ViewFusionError(f"{where}: cond_views must be a non-empty list of views; {_REGENERATE}")
    for view in item["cond_views"]:
        _check_view(view, f"{where}: cond_views")
    _check_cond_set(item["cond_views"], item["target_view"], where, target_may_condition=target_may_condition)
    _check_seed(item["seed"], f"{where}: seed")


def _check_cond_set(cond: list[int], target: int, where: str, *, target_may_condition: bool) -> None:
    """Conditioning views are distinct views of the object other than the target (docs/FORMATS.md):
    a repeated view or the target itself among them would be scored as an honest N-view result."""
    most = nmr.NUM_VIEWS - (0 if target_may_condition else 1)
    if len(cond) > most:
        raise ViewFusionError(f"{where}: {len(cond)} cond_views, but an object has {nmr.NUM_VIEWS} views "
                              f"({most} besides the target); {_REGENERATE}")
    repeated = sorted({view for view in cond if cond.count(view) > 1})
    if repeated:
        raise ViewFusionError(f"{where}: cond_views repeat view {', '.join(map(str, repeated))}; {_REGENERATE}")
    if target in cond and not target_may_condition:
        raise ViewFusionError(f"{where}: the target view {target} is among its cond_views {cond}; {_REGENERATE}")


def _check_labels(item: dict, where: str) -> None:
    """Labels are never taken on trust: the item tag covers key and cond_views only."""
    where = f"{where} ({item['item']})"
    for name, value in item_labels(item).items():
        if name in item and item[name] != value:
            raise ViewFusionError(f"{where}: {name} {item[name]!r} disagrees with its key and cond_views "
                                  f"({value!r}); {_REGENERATE}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shards", required=True, help="shard directory (with manifest.json)")
    parser.add_argument("--split", default="test", help="split to draw from")
    parser.add_argument("--views", type=int, required=True, help="conditioning views per target (1..23)")
    parser.add_argument("--seed", type=int, default=0, help="selection and noise seed")
    parser.add_argument("--max-objects", type=int, default=None,
                        help="at most this many objects, balanced over categories")
    parser.add_argument("--targets-per-object", type=int, default=None,
                        help="targets per object (default 1; with --viewlist all 23 others)")
    parser.add_argument("--viewlist", default=None, help="pixelNeRF-style `synset object view` list")
    parser.add_argument("--out", required=True, help="output JSON (written atomically)")


def run(args: argparse.Namespace) -> int:
    manifest = make_manifest(args.shards, split=args.split, view_count=args.views, seed=args.seed,
                             max_objects=args.max_objects, targets_per_object=args.targets_per_object,
                             viewlist=args.viewlist)
    out = Path(args.out)
    atomic_write_json(out, manifest)
    print(json.dumps({"out": str(out), "objects": manifest["objects"], "items": len(manifest["items"])}))
    return 0
