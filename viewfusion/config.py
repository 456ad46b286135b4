"""Experiment configs: the frozen dataclasses of a config and their checks (no torch, no model).

A config file has four sections (`model`, `diffusion`, `data`, `train`) plus `name` and
`description`. A variant names its parent with `base:` (a path relative to the variant file)
and states only what differs:

    # config/experiments/no_weighting.yaml
    base: paper.yaml
    name: no_weighting
    model:
      weighting: false

Every layer is checked on its own (`check_layer`; files and overrides are read by
`viewfusion.configfile`), so an unknown or mistyped key is reported with the file it is in and
the closest valid key. The dataclass defaults are the paper's values (a test keeps
them equal to `paper.yaml`), so `ExperimentConfig()` is the paper config and a checkpoint's
plain-dict config rebuilds exactly with `from_dict`.

    cfg = viewfusion.configfile.load_config("config/experiments/tiny.yaml", ["train.max_steps=10"])
    model = viewfusion.model.build.build_model(cfg)
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from viewfusion.errors import ViewFusionError
from viewfusion.limits import MAX_IMAGE_SIZE, MAX_PROCESSES, MAX_SEED, NUM_VIEWS

# The noise schedules and prediction targets viewfusion.model.diffusion implements; owned here, where
# reading a config needs them without importing torch, and imported by the diffusion module.
SCHEDULES = ("linear", "quad", "cosine", "warmup10", "warmup50")
PREDICTIONS = ("eps", "v")
# train.precision: "auto" picks by device (select_precision); the others are what they say.
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
# train.validate_metric -> whether higher is better (viewfusion.train.validate keeps best.pt by it).
VALIDATE_METRICS = {"psnr": True, "ssim": True, "heldout_loss": False}
# data.shard_order names, owned here (a config never imports torch); the loader maps each to its stage.
SHARD_ORDERS = ("resample", "epoch")
# Limits that make a typo (an extra zero) a one-line error, not terabytes allocated deep inside: the U-Net's 3x3
# convolution weights (the paper's: 2.0e7, 50x room), noise levels, held-out draws made.
MAX_UNET_WEIGHTS, MAX_TIMESTEPS, MAX_DRAWS = 1_000_000_000, 100_000, 1_000_000


def unet_channels(*, relative: bool, weighting: bool) -> tuple[int, int]:
    """(input, output) channels of the U-Net of a variant, the one place this rule lives. Input:
    a conditioning view and the noisy target (+ the reference view when `relative`); output: the
    noise (+ one weight logit per channel when views are `weighting`-composed)."""
    return 3 * (3 if relative else 2), 3 * (2 if weighting else 1)


def variant_flags(in_channel: int, out_channel: int) -> dict[str, bool] | None:
    """{"relative", "weighting"} of the variant whose U-Net has these channels, or None."""
    for relative in (False, True):
        for weighting in (True, False):
            if unet_channels(relative=relative, weighting=weighting) == (in_channel, out_channel):
                return {"relative": relative, "weighting": weighting}
    return None


@dataclass(frozen=True)
class ModelConfig:
    image_size: int = 64
    inner_channel: int = 64
    channel_mults: tuple[int, ...] = (1, 2, 3, 5)
    attn_res: tuple[int, ...] = (16,)
    res_blocks: int = 3
    norm_groups: int = 32
    dropout: float = 0.0
    weighting: bool = True
    relative: bool = False
    clamp: tuple[float, float] | None = (-1.0, 1.0)

    def __post_init__(self):
        _require_finite(self, "model")
        try:
            check_clamp(self.clamp)
        except ValueError as err:
            raise _Invalid(f"model.{err}") from None
        _require(self.channel_mults, "model.channel_mults must not be empty")
        for name in ("inner_channel", "norm_groups", "res_blocks", "channel_mults", "attn_res"):
            value = getattr(self, name)
            _require(min(value if isinstance(value, tuple) else [value], default=1) >= 1,
                     f"model.{name} must be at least 1, got {value}")
        _require(8 <= self.image_size <= MAX_IMAGE_SIZE, f"model.image_size must be in 8..{MAX_IMAGE_SIZE}")
        weights = sum(18 * (2 * self.res_blocks + 1) * (self.inner_channel * m) ** 2 for m in self.channel_mults)
        _require(weights <= MAX_UNET_WEIGHTS, f"model.inner_channel, channel_mults and res_blocks give a U-Net of "
                 f"about {weights:.1e} weights, more than {MAX_UNET_WEIGHTS:.0e}; an extra zero?")
        _require(self.inner_channel % self.norm_groups == 0,
                 f"model.inner_channel {self.inner_channel} is not divisible by "
                 f"model.norm_groups {self.norm_groups}")
        _require(self.image_size % 2 ** (len(self.channel_mults) - 1) == 0,
                 f"model.image_size {self.image_size} cannot be halved "
                 f"{len(self.channel_mults) - 1} times (one per extra channel_mults entry)")
        _require(0.0 <= self.dropout < 1.0, "model.dropout must be in [0, 1)")

    @property
    def in_channel(self) -> int:
        return unet_channels(relative=self.relative, weighting=self.weighting)[0]

    @property
    def out_channel(self) -> int:
        return unet_channels(relative=self.relative, weighting=self.weighting)[1]

    def unet_kwargs(self) -> dict[str, Any]:
        """The official U-Net keyword arguments."""
        return {"in_channel": self.in_channel, "out_channel": self.out_channel,
                "inner_channel": self.inner_channel, "norm_groups": self.norm_groups,
                "channel_mults": list(self.channel_mults), "attn_res": list(self.attn_res),
                "res_blocks": self.res_blocks, "dropout": self.dropout, "image_size": self.image_size}


@dataclass(frozen=True)
class DiffusionConfig:
    schedule: str = "linear"
    n_timestep: int = 2000
    linear_start: float = 1e-6
    linear_end: float = 1e-2
    prediction: str = "eps"

    def __post_init__(self):
        _require_finite(self, "diffusion")
        _require(self.schedule in SCHEDULES,
                 f"diffusion.schedule {self.schedule!r} is not one of {', '.join(SCHEDULES)}")
        _require(2 <= self.n_timestep <= MAX_TIMESTEPS, f"diffusion.n_timestep must be in 2..{MAX_TIMESTEPS}")
        # Betas are variances in (0, 1): a zero beta at t = 0 makes gamma_0 = 1 (the samplers divide by
        # sqrt(1 - gamma)), a negative one gamma > 1 (NaN noise levels), one >= 1 a zero gamma.
        _require(0 < self.linear_start <= self.linear_end < 1,
                 f"diffusion.linear_start {self.linear_start!r} and linear_end {self.linear_end!r} must satisfy "
                 "0 < linear_start <= linear_end < 1 (the first and last beta)")
        _require(self.prediction in PREDICTIONS,
                 f"diffusion.prediction {self.prediction!r} is not one of {', '.join(PREDICTIONS)}")


@dataclass(frozen=True)
class DataConfig:
    max_views: int = 6
    shuffle_prob: float = 0.1
    self_view_prob: float = 0.0
    num_workers: int = 2
    withheld: tuple[str, ...] = ()
    # The training stream (viewfusion.data.loader.train_loader, docs/NOTES.md issue 21).
    shuffle_buffer: int = 1000
    shuffle_initial: int | None = None
    shard_order: str = "resample"
    stream_segment: int = 5000

    def __post_init__(self):
        _require_finite(self, "data")
        _require(1 <= self.max_views < NUM_VIEWS, f"data.max_views must be in 1..{NUM_VIEWS - 1}")
        _require(self.shuffle_buffer >= 1, "data.shuffle_buffer must be at least 1 (1: no shuffling)")
        _require(self.shuffle_initial is None or 1 <= self.shuffle_initial <= self.shuffle_buffer,
                 "data.shuffle_initial must be null or in 1..data.shuffle_buffer")
        _require(self.shard_order in SHARD_ORDERS,
                 f"data.shard_order {self.shard_order!r} is not one of {', '.join(SHARD_ORDERS)}")
        _require(self.stream_segment >= 1, "data.stream_segment must be at least 1 step")
        _require(0.0 <= self.shuffle_prob <= 1.0, "data.shuffle_prob must be in [0, 1]")
        _require(0.0 <= self.self_view_prob <= 1.0, "data.self_view_prob must be in [0, 1]")
        _require(0 <= self.num_workers <= MAX_PROCESSES, f"data.num_workers must be in 0..{MAX_PROCESSES}")


@dataclass(frozen=True)
class TrainConfig:
    global_batch_size: int = 112
    max_steps: int = 710_000
    lr: float = 1e-4
    warmup_steps: int = 2500
    warmup_offset: int = 1
    lr_decay: float = 0.16
    lr_decay_steps: int = 4_000_000
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float | None = None
    ema_decay: float | None = None
    # auto|bf16|fp16|fp32 (select_precision); the former `bf16: true/false` loads as bf16/fp32.
    precision: str = "auto"
    compile: bool = False
    checkpoint_every: int = 5000
    snapshot_steps: tuple[int, ...] = (100_000, 200_000, 300_000, 400_000, 500_000, 600_000,
                                       700_000)
    log_every: int = 10
    seed: int = 0
    tensorboard: bool = True
    wandb: bool = False
    # In-training validation on the val split (viewfusion.train.validate): every validate_every steps
    # (null: never), the held-out loss on validate_draws fixed draws and DDIM-validate_steps
    # samples of validate_targets fixed targets with validate_views views (null: data.max_views),
    # all seeded by validate_seed; checkpoints/best.pt keeps the best validate_metric.
    validate_every: int | None = None
    validate_draws: int = 64
    validate_targets: int = 16
    validate_views: int | None = None
    validate_steps: int = 10
    validate_metric: str = "psnr"
    validate_seed: int = 0

    def __post_init__(self):
        _require_finite(self, "train")
        for name in ("global_batch_size", "max_steps", "checkpoint_every", "log_every"):
            _require(getattr(self, name) >= 1, f"train.{name} must be at least 1")
        _require(self.lr > 0 and self.warmup_steps >= 0 and self.lr_decay_steps > 0,
                 "train.lr and train.lr_decay_steps must be > 0, train.warmup_steps >= 0")
        _require(self.warmup_offset in (0, 1),
                 "train.warmup_offset must be 0 (the official: step 0 at lr 0) or 1 (step 0 at lr/warmup)")
        _require(self.ema_decay is None or 0.0 < self.ema_decay < 1.0,
                 "train.ema_decay must be null or in (0, 1)")
        _require(self.grad_clip is None or self.grad_clip > 0, "train.grad_clip must be > 0")
        _require(all(s >= 1 for s in self.snapshot_steps), "train.snapshot_steps must be >= 1")
        _require(self.precision in PRECISIONS,
                 f"train.precision {self.precision!r} is not one of {', '.join(PRECISIONS)}")
        _require(self.validate_every is None or self.validate_every >= 1,
                 "train.validate_every must be null (no validation) or at least 1")
        for name in ("validate_draws", "validate_targets", "validate_steps"):
            _require(getattr(self, name) >= 1, f"train.{name} must be at least 1")
        _require(self.validate_draws <= MAX_DRAWS, f"train.validate_draws must be at most {MAX_DRAWS:,}")
        _require(self.validate_views is None or 1 <= self.validate_views <= 23,
                 "train.validate_views must be null (data.max_views) or in 1..23")
        _require(self.validate_metric in VALIDATE_METRICS,
                 f"train.validate_metric {self.validate_metric!r} is not one of {', '.join(VALIDATE_METRICS)}")
        _require(all(0 <= seed <= MAX_SEED for seed in (self.seed, self.validate_seed)),
                 "train.seed and train.validate_seed must be in 0..2^63-1")


def select_precision(requested: str, *, device_type: str, bf16_tensor_cores: bool = False) -> tuple[str, str]:
    """The autocast precision a training run uses and why: (bf16|fp16|fp32, reason).

    A pure function of the request and the device's capability, so the choice is testable
    without a GPU. `auto` takes bf16 on a CUDA GPU with bf16 tensor cores (compute capability
    8.0+: A100, H100, L40S...), fp16 with a gradient scaler on older CUDA GPUs (V100, T4: fp16
    tensor cores, bf16 only emulated), and fp32 on CPU (the CPU kernels' bf16 gain depends on
    AVX-512 bf16; ask for it with `bf16`). An explicit request is kept as it is."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision {requested!r} is not one of {', '.join(PRECISIONS)}")
    if requested != "auto":
        return requested, f"train.precision {requested}"
    if device_type == "cuda":
        if bf16_tensor_cores:
            return "bf16", "auto: the GPU has bf16 tensor cores"
        return "fp16", "auto: the GPU has no bf16 tensor cores (fp16 with a gradient scaler)"
    return "fp32", f"auto: {device_type} device"


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "paper"
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


SECTIONS = {"model": ModelConfig, "diffusion": DiffusionConfig, "data": DataConfig,
            "train": TrainConfig}


class _Invalid(ValueError):
    """A semantic check failed inside a dataclass; the loader adds the file name."""


def _require(ok, message: str) -> None:
    if not ok:
        raise _Invalid(message)


def _require_finite(section, name: str) -> None:
    """Refuse NaN and inf in every float key before the range checks, which they slip through
    (inf > 0 holds; a NaN key that no check compares, e.g. diffusion.linear_start, is not seen)."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if any(isinstance(v, float) and not math.isfinite(v)
               for v in (value if isinstance(value, tuple) else (value,))):
            raise _Invalid(f"{name}.{f.name} must be finite, got {value!r}")


def check_clamp(clamp) -> tuple[float, float] | None:
    """The predicted-x0 clamp range as (low, high) floats, or None; ValueError unless both are
    finite and low < high. The rule's one owner: ModelConfig and every sampler (via
    viewfusion.model.diffusion) call it, and it lives here so that reading a config needs no torch."""
    if clamp is None:
        return None
    lo, hi = (float(v) for v in clamp)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"clamp must be null or [low, high] with finite low < high, got {list(clamp)}")
    return lo, hi


def _valid_keys() -> list[str]:
    keys = ["name", "description"]
    for section, cls in SECTIONS.items():
        keys += [f"{section}.{f.name}" for f in dataclasses.fields(cls)]
    return keys


def unknown_key(key: str, source: str) -> ViewFusionError:
    last = key.rsplit(".", 1)[-1]  # a right key in the wrong section first, then typos
    close = [k for k in _valid_keys() if k.rsplit(".", 1)[-1] == last][:1]
    close = close or difflib.get_close_matches(key, _valid_keys(), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ViewFusionError(f"{source}: unknown key {key!r}{hint}")


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _check_value(value: Any, type_: Any, key: str, source: str) -> Any:
    """`value` converted to `type_` (lists -> tuples, ints -> floats), or a clear error."""
    origin, args = typing.get_origin(type_), typing.get_args(type_)
    if origin is types.UnionType:  # only `X | None` is used
        return None if value is None else _check_value(value, args[0], key, source)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or (args[-1] is not Ellipsis and len(value) != len(args)):
            n = "a list" if args[-1] is Ellipsis else f"a list of {len(args)}"
            raise ViewFusionError(f"{source}: {key} must be {n}, got {value!r}")
        items = args[:1] * len(value) if args[-1] is Ellipsis else args
        return tuple(_check_value(v, t, f"{key}[{i}]", source) for i, (v, t) in enumerate(zip(value, items)))
    if type_ is float and isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        value = float(value)  # PyYAML (YAML 1.1) reads 1e-6 without a dot as a string
    ok = {bool: isinstance(value, bool),
          int: isinstance(value, int) and not isinstance(value, bool),
          float: isinstance(value, (int, float)) and not isinstance(value, bool),
          str: isinstance(value, str)}[type_]
    if not ok:
        raise ViewFusionError(f"{source}: {key} must be {type_.__name__}, got {value!r}")
    return float(value) if type_ is float else value


def check_layer(raw: Any, source: str) -> dict[str, Any]:
    """One file's (or one --set's) dict, keys and types checked, values normalised."""
    if not isinstance(raw, dict):
        raise ViewFusionError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in ("name", "description"):
            out[key] = _check_value(value, str, key, source)
        elif key in SECTIONS:
            if not isinstance(value, dict):
                raise ViewFusionError(f"{source}: section {key!r} must be a mapping")
            hints = typing.get_type_hints(SECTIONS[key])
            for sub, v in value.items():
                if key == "train" and sub == "bf16":  # the former key: true -> bf16, false -> fp32
                    if "precision" in value:
                        raise ViewFusionError(f"{source}: train.bf16 and train.precision both given; "
                                              "keep train.precision (auto|bf16|fp16|fp32)")
                    bf16 = _check_value(v, bool, "train.bf16", source)
                    out.setdefault(key, {})["precision"] = "bf16" if bf16 else "fp32"
                    continue
                if sub not in hints:
                    raise unknown_key(f"{key}.{sub}", source)
                out.setdefault(key, {})[sub] = _check_value(v, hints[sub], f"{key}.{sub}", source)
        else:
            raise unknown_key(str(key), source)
    return out


def from_dict(d: dict[str, Any], *, source: str = "config") -> ExperimentConfig:
    """A plain dict (from YAML or a checkpoint) -> ExperimentConfig; missing keys get defaults."""
    d = check_layer(d, source)
    try:
        sections = {name: cls(**d.get(name, {})) for name, cls in SECTIONS.items()}
        return ExperimentConfig(name=d.get("name", "paper"), description=d.get("description", ""),
                                **sections)
    except _Invalid as err:
        raise ViewFusionError(f"{source}: {err}") from None


def to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """Plain dict of builtins (tuples -> lists): YAML-, JSON- and `weights_only`-safe."""
    def plain(v):
        return [plain(x) for x in v] if isinstance(v, (list, tuple)) else v
    d = dataclasses.asdict(cfg)
    return {k: {kk: plain(vv) for kk, vv in v.items()} if isinstance(v, dict) else v
            for k, v in d.items()}


def config_sha256(cfg: ExperimentConfig) -> str:
    """The resolved config's fingerprint (sha256 of its canonical JSON): equal iff every key is."""
    from viewfusion.fsutil import sha256_json

    return sha256_json(to_dict(cfg))
