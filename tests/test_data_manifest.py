"""Evaluation manifests (issue 3, item 5)."""

from __future__ import annotations

import itertools
import json
import re
import shutil

import pytest

from viewfusion.cli import main
from viewfusion.data import nmr
from viewfusion.data.manifest import make_manifest, read_manifest
from viewfusion.data.shardmanifest import read_shard_manifest
from viewfusion.errors import ViewFusionError
from viewfusion.fsutil import atomic_write_json


def test_deterministic_and_well_formed(synth_shards):
    a = make_manifest(synth_shards, split="train", view_count=3, seed=5, targets_per_object=3)
    assert a == make_manifest(synth_shards, split="train", view_count=3, seed=5, targets_per_object=3)
    assert a != make_manifest(synth_shards, split="train", view_count=3, seed=6, targets_per_object=3)
    assert a["split"] == "train" and a["view_count"] == 3 and a["source"] == "random" and a["seed"] == 5
    items = a["items"]
    assert len(items) == 18 * 3 and len({i["item"] for i in items}) == len(items)
    for item in items:
        assert item["target_view"] not in item["cond_views"] and len(set(item["cond_views"])) == 3
        assert item["item"] == f"{item['key']}-t{item['target_view']:02d}-v3-{items.index(item) % 3}"
        assert item["key"] == nmr.object_key(item["synset"], item["object_id"])
        assert item["category"] == nmr.SYNSETS[item["synset"]] and 0 <= item["seed"] < 2**31
    assert len({i["seed"] for i in items}) == len(items)


def test_view_counts_share_targets_and_nest(synth_shards):
    by_n = {n: make_manifest(synth_shards, split="test", view_count=n, seed=0, targets_per_object=2)["items"]
            for n in (1, 3, 6, 23)}
    for items in zip(*by_n.values()):
        assert len({(i["key"], i["target_view"], i["seed"]) for i in items}) == 1
        for small, large in itertools.pairwise(items):
            assert large["cond_views"][: small["view_count"]] == small["cond_views"]
    assert sorted(by_n[23][0]["cond_views"] + [by_n[23][0]["target_view"]]) == list(range(24))


def test_max_objects_balances_categories(synth_shards):
    m = make_manifest(synth_shards, split="train", view_count=1, seed=0, max_objects=5)
    synsets = [i["synset"] for i in m["items"]]
    assert m["objects"] == 5 and len(set(synsets)) == 5
    order = read_shard_manifest(synth_shards)["splits"]["train"]["objects"]
    keys = [i["key"] for i in m["items"]]
    assert keys == sorted(keys, key=order.index)


def test_bad_arguments(synth_shards):
    for kwargs, message in [({"view_count": 0}, "--views must be"), ({"view_count": 24}, "--views must be"),
                            ({"split": "nope"}, "no split 'nope'"), ({"max_objects": 0}, "--max-objects")]:
        with pytest.raises(ViewFusionError, match=message):
            make_manifest(synth_shards, **{"view_count": 1, **kwargs})


def test_viewlist_one_view_protocol(synth_shards, tmp_path):
    keys = read_shard_manifest(synth_shards)["splits"]["test"]["objects"]
    lines = [f"{k[:8]} {k[9:]} {i + 2}" for i, k in enumerate(keys[:3])] + ["04530566 not_in_split 0", ""]
    viewlist = tmp_path / "src_dvr.txt"
    viewlist.write_text("\n".join(lines))
    m = make_manifest(synth_shards, split="test", view_count=1, seed=0, viewlist=viewlist)
    assert m["source"] == "viewlist" and m["objects"] == 3 and len(m["items"]) == 3 * 23
    assert m["viewlist"]["matched"] == 3 and m["viewlist"]["split_objects_without_line"] == len(keys) - 3
    first = [i for i in m["items"] if i["key"] == keys[0]]
    assert {i["cond_views"][0] for i in first} == {2} and sorted(i["target_view"] for i in first) == [
        v for v in range(24) if v != 2]
    with pytest.raises(ViewFusionError, match="use it with --views 1"):
        make_manifest(synth_shards, split="test", view_count=2, viewlist=viewlist)
    viewlist.write_text("02691156 abc\n")
    with pytest.raises(ViewFusionError, match="src_dvr.txt:1: expected"):
        make_manifest(synth_shards, split="test", view_count=1, viewlist=viewlist)


def test_cli_writes_json(synth_shards, tmp_path, capsys):
    out = tmp_path / "m" / "test-v2.json"
    assert main(["data", "manifest", "--shards", str(synth_shards), "--split", "test", "--views", "2",
                 "--seed", "3", "--targets-per-object", "2", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["view_count"] == 2 and len(data["items"]) == 10 and '"items": 10' in capsys.readouterr().out
    assert main(["data", "manifest", "--shards", str(tmp_path), "--views", "1", "--out", str(out)]) == 2
    assert "manifest.json missing" in capsys.readouterr().err


# --------------------------------------------------------- read_manifest (issue 16, item 4)


@pytest.fixture(scope="module")
def written(synth_shards, tmp_path_factory):
    manifest = make_manifest(synth_shards, split="test", view_count=2, seed=1, targets_per_object=2)
    path = tmp_path_factory.mktemp("manifest") / "test-v2.json"
    atomic_write_json(path, manifest)
    return manifest, path


def test_read_manifest_returns_what_make_manifest_wrote(written):
    manifest, path = written
    assert read_manifest(path) == manifest


def _item(index=0, **changes):
    def edit(manifest):
        manifest["items"][index].update(changes)
    return edit


def _top(**changes):
    return lambda manifest: manifest.update(changes)


def _drop(key, index=None):
    def edit(manifest):
        del (manifest if index is None else manifest["items"][index])[key]
    return edit


def _duplicate(manifest):
    manifest["items"][1]["item"] = manifest["items"][0]["item"]


def _cond(index, make):
    """Set items[index]'s cond_views to make(target_view, its cond_views)."""
    def edit(manifest):
        item = manifest["items"][index]
        item["cond_views"] = make(item["target_view"], item["cond_views"])
    return edit


def _figure(manifest):
    manifest["source"] = "figure"


@pytest.mark.parametrize(("edit", "message"), [
    (_drop("items"), r": no items;"),
    (_drop("cond_views", 3), r"items\[3\]: no cond_views;"),
    (_item(item="../../evil"), r"items\[0\]: item: '\.\./\.\./evil' is not a plain name"),
    (_item(key="02691156/x"), r"items\[0\] \(.*\): key: '02691156/x' is not a plain name"),
    (_item(target_view=24), r"items\[0\] \(.*\): target_view: 24 is not a view in 0\.\.23"),
    (_item(target_view=True), r"target_view: True is not a view"),
    (_item(1, cond_views=[]), r"items\[1\] \(.*\): cond_views must be a non-empty list"),
    (_item(cond_views="3"), r"cond_views must be a non-empty list"),
    (_item(cond_views=[2, -1]), r"cond_views: -1 is not a view"),
    (_item(cond_views=[2, 1.0]), r"cond_views: 1.0 is not a view"),
    (_item(seed=-1), r"items\[0\] \(.*\): seed: -1 is not an int in 0\.\.2\^63-1"),
    (_top(seed=-1), r": seed: -1 is not an int in 0\.\.2\^63-1"),
    (_item(seed=2**63), r"items\[0\] \(.*\): seed: 9223372036854775808 is not an int in 0\.\.2\^63-1"),
    (_top(seed=2**64), r": seed: 18446744073709551616 is not an int in"),
    (_top(seed="0"), r"seed: '0' is not an int"),
    (_top(items=[]), r"items must be a non-empty list"),
    (_top(items=["x"]), r"items\[0\]: not a JSON object"),
    (_top(format="viewfusion-nmr-shards"), r"not a viewfusion-eval-manifest v1 file"),
    (_duplicate, r"items\[1\]: duplicate item name"),
    # docs/FORMATS.md: conditioning views are distinct and never the target (issue 30)
    (_cond(2, lambda t, c: [c[0], t]), r"items\[2\] \(.*\): the target view \d+ is among its cond_views"),
    (_cond(1, lambda t, c: [c[1], c[0], c[1]]), r"items\[1\] \(.*\): cond_views repeat view \d+;"),
    (_cond(0, lambda t, c: list(range(24))), r"items\[0\] \(.*\): 24 cond_views, but an object has 24 views "
                                            r"\(23 besides the target\)"),
    (_cond(0, lambda t, c: c * 13), r"items\[0\] \(.*\): 26 cond_views, but an object has 24 views"),
    (lambda m: (_figure(m), _cond(0, lambda t, c: [t, *c, c[0]])(m)), r"items\[0\] \(.*\): cond_views repeat"),
    # issue 30: labels that metrics rows carry must be what the key and cond_views (which the
    # images' item tag covers) say
    (_item(2, view_count=7), r"items\[2\] \(.*\): view_count 7 disagrees with its key and cond_views \(2\)"),
    (_item(category="spaceship"), r"items\[0\] \(.*\): category 'spaceship' disagrees"),
    (_item(synset="x"), r"synset 'x' disagrees"),
    (_item(object_id="other"), r"object_id 'other' disagrees"),
])
def test_read_manifest_refuses_bad_items(written, tmp_path, edit, message):
    manifest, _ = written
    manifest = json.loads(json.dumps(manifest))
    edit(manifest)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(manifest))
    with pytest.raises(ViewFusionError, match=f"^manifest {re.escape(str(path))}.*{message}") as err:
        read_manifest(path)
    assert "\n" not in str(err.value)


def test_only_the_figure_manifest_may_condition_on_its_targets(written, tmp_path):
    """Figure 2 shows the view weights at every target, the six input views included."""
    from viewfusion.evaluate.figure_samples import weights_manifest

    key = written[0]["items"][0]["key"]
    figure = weights_manifest(key, split="test", seed=0)
    assert any(it["target_view"] in it["cond_views"] for it in figure["items"])
    path = tmp_path / "figure.json"
    atomic_write_json(path, figure)
    assert read_manifest(path) == figure
    atomic_write_json(path, {**figure, "source": "random"})
    with pytest.raises(ViewFusionError, match=r"items\[0\] .*: the target view 0 is among its cond_views"):
        read_manifest(path)


def test_sample_refuses_a_manifest_conditioning_on_its_target(written, synth_shards, tmp_path, capsys):
    manifest = json.loads(json.dumps(written[0]))
    _cond(3, lambda t, c: [t])(manifest)
    path = tmp_path / "edited.json"
    atomic_write_json(path, manifest)
    out = tmp_path / "samples"
    assert main(["sample", "--checkpoint", str(tmp_path / "unread.pt"), "--manifest", str(path),
                 "--shards", str(synth_shards), "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"manifest {path}: items[3] ({manifest['items'][3]['item']}): " \
        "the target view" in err, err
    assert not out.exists()


@pytest.mark.parametrize(("text", "message"), [
    (None, "no such file"), ("{", "unreadable JSON"), ("[1]", "not a JSON object"), ("\xff", "unreadable JSON")])
def test_read_manifest_refuses_unreadable_files(tmp_path, text, message):
    path = tmp_path / "m.json"
    if text is not None:
        path.write_bytes(text.encode("latin-1"))
    with pytest.raises(ViewFusionError, match=f"manifest {re.escape(str(path))}: {message}"):
        read_manifest(path)


def test_hostile_names_never_reach_item_names(synth_shards, tmp_path):
    """Keys become sample file names: a viewlist or a shard manifest naming `../../evil` is refused."""
    viewlist = tmp_path / "src_dvr.txt"
    viewlist.write_text("02691156 ../../evil 0\n")
    with pytest.raises(ViewFusionError, match=r"src_dvr.txt:1: object id: '\.\./\.\./evil' is not a plain name"):
        make_manifest(synth_shards, split="test", view_count=1, viewlist=viewlist)
    copy = shutil.copytree(synth_shards, tmp_path / "shards")
    shards = json.loads((copy / "manifest.json").read_text())
    shards["splits"]["test"]["objects"][0] = "02691156_../../evil"
    (copy / "manifest.json").write_text(json.dumps(shards))
    with pytest.raises(ViewFusionError, match=r"splits.test.objects: '02691156_\.\./\.\./evil' is not a plain name"):
        make_manifest(copy, split="test", view_count=1)


def test_viewlist_gives_each_split_object_one_seeded_view_and_feeds_the_pixelnerf_manifest(synth_shards, tmp_path):
    from viewfusion.cli import main
    from viewfusion.data.manifest import make_manifest, read_viewlist
    from viewfusion.data.shardmanifest import read_shard_manifest

    out = tmp_path / "viewlist.txt"
    assert main(["data", "viewlist", "--shards", str(synth_shards), "--split", "test", "--seed", "0",
                 "--out", str(out)]) == 0
    sources = read_viewlist(out)
    keys = read_shard_manifest(synth_shards)["splits"]["test"]["objects"]
    assert sorted(sources) == sorted(keys) and all(0 <= v < 24 for v in sources.values())
    again = tmp_path / "again.txt"
    assert main(["data", "viewlist", "--shards", str(synth_shards), "--out", str(again)]) == 0
    assert again.read_bytes() == out.read_bytes()
    manifest = make_manifest(synth_shards, split="test", view_count=1, seed=0, viewlist=out)
    assert len(manifest["items"]) == 23 * len(keys)  # every other view is a target
    assert all(it["cond_views"] == [sources[it["key"]]] for it in manifest["items"])
    assert main(["data", "viewlist", "--shards", str(synth_shards), "--seed", "-1", "--out", str(again)]) == 2
