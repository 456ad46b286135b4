"""Experiment configs: the YAMLs, validation errors, overrides, round trips, model building."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from viewfusion import config as C
from viewfusion.configfile import load_config
from viewfusion.errors import ViewFusionError
from viewfusion.model.build import build_model

EXPERIMENTS = Path(__file__).resolve().parents[1] / "config" / "experiments"
NAMES = ["paper", "no_weighting", "relative", "withhold_car", "tiny"]


def load(name: str, *overrides: str) -> C.ExperimentConfig:
    return load_config(EXPERIMENTS / f"{name}.yaml", overrides)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", NAMES)
def test_every_experiment_loads_and_names_itself(name):
    assert load(name).name == name


def test_paper_yaml_equals_the_dataclass_defaults():
    paper = load("paper")
    assert dataclasses.replace(paper, description="") == C.ExperimentConfig()
    assert paper.model.unet_kwargs()["channel_mults"] == [1, 2, 3, 5]
    assert paper.train.global_batch_size == 112 and paper.train.max_steps == 710_000


def test_variants_differ_from_paper_only_where_intended():
    def diff(a, b):
        da, db = C.to_dict(a), C.to_dict(b)
        return {f"{s}.{k}" for s in C.SECTIONS for k in da[s] if da[s][k] != db[s][k]}

    paper = load("paper")
    assert diff(load("no_weighting"), paper) == {"model.weighting"}
    assert diff(load("relative"), paper) == {"model.relative"}
    assert diff(load("withhold_car"), paper) == {"data.withheld"}
    assert (load("no_weighting").model.out_channel, load("relative").model.in_channel) == (3, 9)


def test_checkpoint_variants_match_the_yamls():
    from viewfusion.model.checkpoint import VARIANTS

    for name, overrides in VARIANTS.items():
        assert C.from_dict(overrides) == dataclasses.replace(load(name), description="")


def test_every_schedule_a_config_accepts_builds():
    from viewfusion.model.diffusion import Schedule

    for kind in C.SCHEDULES:
        assert Schedule.make(kind, 10).betas.shape == (10,)


def test_unknown_key_names_the_file_and_suggests(tmp_path):
    path = write(tmp_path, "bad.yaml", "base: %s\ntrain:\n  max_step: 3\n" % (EXPERIMENTS / "paper.yaml"))
    with pytest.raises(ViewFusionError,
                       match=r"bad\.yaml: unknown key 'train.max_step' \(did you mean 'train.max_steps'\?\)"):
        load_config(path)


def test_key_in_the_wrong_section_suggests_the_right_one(tmp_path):
    path = write(tmp_path, "bad.yaml", "model:\n  max_steps: 3\n")
    with pytest.raises(ViewFusionError, match=r"did you mean 'train.max_steps'"):
        load_config(path)


def test_error_names_the_parent_file_that_is_wrong(tmp_path):
    write(tmp_path, "parent.yaml", "data:\n  max_view: 3\n")
    child = write(tmp_path, "child.yaml", "base: parent.yaml\nname: child\n")
    with pytest.raises(ViewFusionError, match=r"parent\.yaml: unknown key 'data.max_view'"):
        load_config(child)


@pytest.mark.parametrize("text, message", [
    ("train:\n  lr: fast\n", r"train.lr must be float, got 'fast'"),
    ("train:\n  bf16: 1\n", r"train.bf16 must be bool"),
    ("train:\n  max_steps: 1.5\n", r"train.max_steps must be int"),
    ("model:\n  channel_mults: 4\n", r"model.channel_mults must be a list"),
    ("model:\n  clamp: [0, 1, 2]\n", r"model.clamp must be a list of 2"),
    ("model:\n  inner_channel: 30\n", r"not divisible by model.norm_groups"),
    ("diffusion:\n  schedule: sigmoid\n", r"diffusion.schedule 'sigmoid' is not one of"),
    ("- 1\n", r"expected a mapping"),
    ("model: [1]\n", r"section 'model' must be a mapping"),
    ("base: loop.yaml\n", r"loops back"),
    ("model:\n  clamp: [1, -1]\n",
     r"model.clamp must be null or \[low, high\] with finite low < high, got \[1.0, -1.0\]"),
    ("model:\n  clamp: [0.5, 0.5]\n", r"loop\.yaml: model.clamp must be null or \[low, high\]"),
    ("model:\n  clamp: [-.inf, .inf]\n", r"model.clamp must be finite, got \(-inf, inf\)"),
    ("model:\n  dropout: .nan\n", r"model.dropout must be finite, got nan"),
    ("train:\n  lr: .inf\n", r"train.lr must be finite, got inf"),
    ("train:\n  lr: 1e999\n", r"train.lr must be finite, got inf"),  # a string to YAML 1.1
    ("train:\n  adam_betas: [0.9, .nan]\n", r"train.adam_betas must be finite"),
    ("diffusion:\n  linear_start: .nan\n", r"diffusion.linear_start must be finite, got nan"),
    ("diffusion:\n  linear_start: 0.0\n", r"must satisfy 0 < linear_start <= linear_end < 1"),
    ("diffusion:\n  linear_start: -1.0e-6\n", r"must satisfy 0 < linear_start <= linear_end < 1"),
    ("diffusion:\n  linear_end: 1.0\n", r"must satisfy 0 < linear_start <= linear_end < 1"),
    ("diffusion:\n  linear_start: 0.02\n", r"diffusion.linear_start 0.02 and linear_end 0.01 must satisfy"),
    ("diffusion:\n  linear_end: -.inf\n", r"diffusion.linear_end must be finite, got -inf"),
    ("data:\n  shuffle_prob: .nan\n", r"data.shuffle_prob must be finite, got nan"),
    ("data:\n  shuffle_buffer: 0\n", r"data.shuffle_buffer must be at least 1 \(1: no shuffling\)"),
    ("data:\n  shuffle_buffer: 8\n  shuffle_initial: 9\n", r"data.shuffle_initial must be null or in 1..data"),
    ("data:\n  shard_order: sorted\n", r"data.shard_order 'sorted' is not one of resample, epoch"),
    ("data:\n  stream_segment: 0\n", r"data.stream_segment must be at least 1 step"),
    ("train:\n  warmup_offset: 2\n", r"train.warmup_offset must be 0 \(the official"),
    # ranges (issue 30): positive sizes, and no typo that allocates terabytes or starts a million processes
    ("model:\n  inner_channel: 0\n", r"model.inner_channel must be at least 1, got 0"),
    ("model:\n  norm_groups: 0\n", r"model.norm_groups must be at least 1, got 0"),  # was a ZeroDivisionError
    ("model:\n  res_blocks: 0\n", r"model.res_blocks must be at least 1, got 0"),
    ("model:\n  channel_mults: [1, 0]\n", r"model.channel_mults must be at least 1, got \(1, 0\)"),
    ("model:\n  attn_res: [-16]\n", r"model.attn_res must be at least 1, got \(-16,\)"),
    ("model:\n  image_size: 4096\n", r"model.image_size must be in 8..1024"),
    ("model:\n  inner_channel: 6400\n", r"give a U-Net of about 2.0e\+11 weights, more than 1e\+09"),
    ("diffusion:\n  n_timestep: 10000000000\n", r"diffusion.n_timestep must be in 2..100000"),
    ("data:\n  max_views: 24\n", r"data.max_views must be in 1..23"),
    ("data:\n  num_workers: 100000\n", r"data.num_workers must be in 0..256"),
    ("train:\n  seed: 9223372036854775808\n", r"train.seed and train.validate_seed must be in 0..2\^63-1"),
    ("train:\n  validate_seed: -1\n", r"train.seed and train.validate_seed must be in 0..2\^63-1"),
    ("train:\n  validate_draws: 10000000000\n", r"train.validate_draws must be at most 1,000,000"),
])
def test_mistyped_and_invalid_values(tmp_path, text, message):
    path = write(tmp_path, "loop.yaml", text)
    with pytest.raises(ViewFusionError, match=message):
        load_config(path)


def test_an_alias_bomb_in_a_config_file_or_set_is_refused(tmp_path):
    bomb = "[" + ", ".join(["&a0 [1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [
        f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]) + "]"
    with pytest.raises(ViewFusionError, match=r"bomb\.yaml: holds more than 1,000,000 values"):
        load_config(write(tmp_path, "bomb.yaml", f"model:\n  attn_res: {bomb}\n"))
    with pytest.raises(ViewFusionError, match=r"^--set model\.attn_res=\[&a0 .*\.\.\. \(.* characters\): holds more"):
        load("tiny", f"model.attn_res={bomb}")


def test_a_binary_config_is_one_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_bytes(bytes(range(256)))
    with pytest.raises(ViewFusionError, match=f"^{path}: not valid YAML: .*") as err:
        load_config(path)
    assert "\n" not in str(err.value)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ViewFusionError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ViewFusionError, match="not valid YAML"):
        load_config(write(tmp_path, "x.yaml", "model: [\n"))


def test_set_overrides_are_typed_and_checked():
    cfg = load("tiny", "train.max_steps=10", "model.clamp=null", "train.adam_betas=[0.5, 0.9]", "name=x")
    assert (cfg.train.max_steps, cfg.model.clamp, cfg.train.adam_betas, cfg.name) == (10, None, (0.5, 0.9), "x")
    assert load("tiny", "train.lr=1").train.lr == 1.0  # ints are fine where floats go
    assert load("tiny", "diffusion.linear_start=1e-6").diffusion.linear_start == 1e-6  # YAML 1.1 reads a string
    for bad, message in [("train.max_steps", "expected key=value"), ("train.nope=1", "unknown key"),
                         ("train.max_steps=ten", "must be int"), ("a.b.c=1", "unknown key"),
                         ("model.inner_channel=30", r"tiny\.yaml --set model.inner_channel=30: ")]:
        with pytest.raises(ViewFusionError, match=message):
            load("tiny", bad)


@pytest.mark.parametrize("name", NAMES)
def test_dict_round_trip(name):
    cfg = load(name)
    d = C.to_dict(cfg)
    assert isinstance(d["model"]["channel_mults"], list)
    assert C.from_dict(d) == cfg


def test_build_model_follows_the_config():
    cfg = load("tiny", "model.image_size=32", "model.inner_channel=16", "model.channel_mults=[1, 2]",
               "model.weighting=false", "model.relative=true")
    model = build_model(cfg)
    assert (model.weighting, model.relative) == (False, True)
    assert model.denoise_fn.downs[0].weight.shape[1] == 9
    assert model.gammas.shape == (cfg.diffusion.n_timestep,)


@pytest.mark.parametrize("text", ["", "# only a comment\n\n"])
def test_empty_file_is_refused_not_the_paper_config(tmp_path, text):
    with pytest.raises(ViewFusionError, match=r"empty\.yaml: the file is empty .*base: paper\.yaml"):
        load_config(write(tmp_path, "empty.yaml", text))
    # an empty parent is refused too, naming the parent; `base:` plus keys is a complete variant
    child = write(tmp_path, "child.yaml", "base: empty.yaml\nname: child\n")
    with pytest.raises(ViewFusionError, match=r"empty\.yaml: the file is empty"):
        load_config(child)
    write(tmp_path, "empty.yaml", f"base: {EXPERIMENTS / 'paper.yaml'}\n")
    assert load_config(child).name == "child"


def test_non_finite_values_are_refused_from_every_source():
    """--set values and a checkpoint's plain dict go through the same dataclass checks."""
    with pytest.raises(ViewFusionError, match=r"--set train.grad_clip=.inf: train.grad_clip must be finite"):
        load("tiny", "train.grad_clip=.inf")
    with pytest.raises(ViewFusionError, match=r"ckpt.pt: diffusion.linear_end must be finite, got nan"):
        C.from_dict({"diffusion": {"linear_end": float("nan")}}, source="ckpt.pt")
    with pytest.raises(ViewFusionError, match=r"model.clamp must be null or \[low, high\]"):
        C.from_dict({"model": {"clamp": [1.0, -1.0]}})
    assert load("tiny", "model.clamp=[0, 1]").model.clamp == (0.0, 1.0)


def test_written_sha256_is_what_the_files_set_not_the_defaults(tmp_path):
    """The workflow's retrain trigger: a change in the base chain or the overrides changes it;
    keys left at their defaults are not part of it (a new code default does not retrain)."""
    from viewfusion.configfile import written_layers, written_sha256

    base = tmp_path / "base.yaml"
    base.write_text("name: b\ntrain:\n  lr: 0.001\n")
    variant = tmp_path / "v.yaml"
    variant.write_text("base: base.yaml\nname: v\n")
    first = written_sha256(variant)
    assert written_layers(variant) == {"name": "v", "train": {"lr": 0.001}}  # no defaults in it
    assert written_sha256(variant, ["train.max_steps=5"]) != first
    base.write_text("name: b\ntrain:\n  lr: 0.002\n")
    assert written_sha256(variant) != first
