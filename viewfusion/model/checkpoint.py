"""Checkpoints: explicit dicts, atomic writes, `weights_only` loads, and the official import.

A checkpoint is a plain dict saved with `torch.save` (docs/FORMATS.md):

    {"format": "viewfusion-checkpoint", "format_version": 1,
     "model": ViewFusion state dict (official names: denoise_fn.* + 6 schedule buffers),
     "optimizer": Adam state dict | None, "scheduler": LambdaLR state dict | None,
     "ema": {"decay", "n_averaged", "model": state dict} | None,
     "step": optimizer steps done, "config": viewfusion.config.to_dict(cfg),
     "rng": [per-rank RNG states, rank order] | None, "world_size": int | None,
     "imported_from": {...} (only in files made by import-official),
     "weights_sha256": weights_sha256 of "model" (and "ema" holds its own): stamped by save()}

Every load of one of ours checks those stamps (torch.load checks no CRC: flipped tensor bytes
load and sample); files saved before the stamps existed load unverified (docs/FORMATS.md).
Files are written to a temporary name beside the target, fsynced and renamed (never half a
file under the real name) and always read with `torch.load(..., weights_only=True)`.

    viewfusion import-official best_model_all.pt runs/official/final.pt [--variant paper]
        [--config config/experiments/paper.yaml]

converts the published checkpoint (keys model, optimizer, it, t, run_id, psnr, ssim) so that
`viewfusion sample --checkpoint runs/official/final.pt` runs the published weights unchanged.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import zipfile
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from viewfusion.config import (
    ExperimentConfig,
    check_clamp,
    from_dict,
    to_dict,
    variant_flags,
)
from viewfusion.configfile import load_config
from viewfusion.errors import ViewFusionError
from viewfusion.fsutil import atomic_path
from viewfusion.model.build import build_model

if TYPE_CHECKING:
    from viewfusion.model.viewfusion import ViewFusion

FORMAT = "viewfusion-checkpoint"
FORMAT_VERSION = 1
REQUIRED = frozenset({"format", "format_version", "model", "step", "config"})
HASH_KEY = "weights_sha256"  # beside "model" and inside "ema": the weights' own stamp
# The official variants differ from the paper config only here (the YAMLs of the same names).
VARIANTS = {
    "paper": {"name": "paper"},
    "no_weighting": {"name": "no_weighting", "model": {"weighting": False}},
    "relative": {"name": "relative", "model": {"relative": True}},
}
# The official trainer stores psnr/ssim beside the weights as numpy scalars: the only globals a
# `weights_only` load of its file has to allow (anything else in a checkpoint is refused).
OFFICIAL_SAFE_GLOBALS = [np._core.multiarray.scalar, np.dtype, np.dtypes.Float64DType,
                         np.dtypes.Float32DType, np.dtypes.Int64DType]


def save(path: str | Path, ckpt: dict[str, Any]) -> None:
    """Atomically write `ckpt` (a complete checkpoint dict) to `path`, its weights (and EMA
    weights) stamped with their weights_sha256, which every load verifies."""
    missing = REQUIRED - ckpt.keys()
    if missing:
        raise ValueError(f"checkpoint dict lacks {sorted(missing)}")
    ckpt = {**ckpt, HASH_KEY: weights_sha256(ckpt["model"])}
    if isinstance(ckpt.get("ema"), Mapping):
        ckpt["ema"] = {**ckpt["ema"], HASH_KEY: weights_sha256(ckpt["ema"]["model"])}
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def verify_weights(ckpt: Mapping[str, Any], path: str | Path) -> None:
    """Refuse weights whose bytes differ from the weights_sha256 stamped at save (a damaged or
    edited file). Weights without a stamp (saved before stamps existed) are not checked."""
    for what, holder in (("model", ckpt), ("EMA", ckpt.get("ema"))):
        if not isinstance(holder, Mapping) or HASH_KEY not in holder:
            continue
        try:
            found = weights_sha256(holder.get("model"))
        except (TypeError, AttributeError):  # not a state dict: it cannot match any stamp
            found = None
        if found != holder[HASH_KEY]:
            now = found[:12] if found else "no state dict"
            raise ViewFusionError(f"{path}: the {what} weights do not match the sha256 stamped when the file was "
                                  f"saved ({str(holder[HASH_KEY])[:12]}, now {now}): the file is damaged or was "
                                  "edited; restore it from a copy or retrain")


def read(path: str | Path, *, numpy_scalars: bool = False) -> Any:
    """Whatever a checkpoint file holds (ours, official, a bare state dict), loaded with
    `weights_only=True` (numpy_scalars: also the official file's metric scalars); the one reader of
    checkpoint files, with one-line errors for a missing, truncated or foreign file."""
    path = Path(path)
    if path.is_dir():
        raise ViewFusionError(f"checkpoint {path}: is a directory, expected a checkpoint file")
    if not path.is_file():
        raise ViewFusionError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as fh:
            head = fh.read(16)
        raise ViewFusionError(f"{path} is not a PyTorch checkpoint (not a torch.save zip archive; "
                              f"{path.stat().st_size} bytes starting {head!r}): truncated or another file")
    try:
        with torch.serialization.safe_globals(OFFICIAL_SAFE_GLOBALS if numpy_scalars else []):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError, KeyError...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ViewFusionError(f"{path} cannot be read as a checkpoint (truncated, corrupt or "
                              f"holding non-tensor objects): {first}") from None


def weights_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """The identity of the weights that make samples: hex sha256 over the sorted (name, dtype,
    shape, bytes) of a state dict. Unlike the file's sha256 it ignores the optimizer, RNG states,
    config and step saved beside the weights, and how torch.save laid them out."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name]
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state dict entry {name!r} is {type(tensor).__name__}, not a tensor")
        tensor = tensor.detach().cpu().contiguous()
        # The JSON header fixes the byte count that follows, so no two state dicts share a stream.
        h.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode() + b"\n")
        h.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def load(path: str | Path) -> dict[str, Any]:
    """A checkpoint dict of ours, checked; clear errors for anything else."""
    return as_ours(read(path), path)


def is_ours(obj: Any) -> bool:
    return isinstance(obj, Mapping) and obj.get("format") == FORMAT


def as_ours(ckpt: Any, path: str | Path) -> dict[str, Any]:
    """`ckpt` if it is a complete checkpoint dict of ours; a clear error naming `path` otherwise."""
    if is_ours(ckpt):
        if ckpt.get("format_version") != FORMAT_VERSION:
            raise ViewFusionError(f"{path}: checkpoint format_version {ckpt.get('format_version')} "
                                  f"is not the supported {FORMAT_VERSION}")
        if missing := sorted(REQUIRED - ckpt.keys()):
            raise ViewFusionError(f"{path}: checkpoint lacks the keys {missing} (edited by hand or "
                                  "written by another tool); regenerate it")
        verify_weights(ckpt, path)
        return ckpt
    if is_official(ckpt):
        raise ViewFusionError(f"{path} is an official ViewFusion checkpoint (keys model, it, ...); "
                              f"convert it first: viewfusion import-official {path} OUT.pt")
    what = f"a dict with keys {sorted(map(str, ckpt))[:8]}" if isinstance(ckpt, dict) else type(ckpt).__name__
    raise ViewFusionError(f"{path} is not a viewfusion checkpoint: it holds {what}")


def is_official(obj: Any) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get("model"), dict) and "it" in obj


def config_of(ckpt: dict[str, Any], *, source: str = "checkpoint") -> ExperimentConfig:
    return from_dict(ckpt["config"], source=f"{source} (its config)")


def load_model(path: str | Path, *, ema: bool = False, device: str | torch.device = "cpu"):
    """(ViewFusion in eval mode, its ExperimentConfig, the checkpoint dict) from a checkpoint file
    of ours or an official one (converted in memory). `ema=True` takes the EMA weights."""
    path = Path(path)
    raw = read(path, numpy_scalars=True)
    ckpt = convert_official(raw, source=str(path)) if is_official(raw) else as_ours(raw, path)
    model, cfg = model_of(ckpt, ema=ema, source=str(path))
    return model.to(device).eval(), cfg, ckpt


def model_of(ckpt: dict[str, Any], *, ema: bool = False, source: str = "checkpoint"):
    """(ViewFusion, ExperimentConfig): the model a checkpoint dict of ours describes, built from
    its own config, with its weights (or its EMA weights) loaded strictly."""
    cfg = config_of(ckpt, source=source)
    if ema and ckpt.get("ema") is None:
        raise ViewFusionError(f"{source} holds no EMA weights (train.ema_decay was null)")
    model = build_model(cfg)
    weights = ckpt["ema"]["model"] if ema else ckpt["model"]
    load_state(model, weights, source=f"{source} ({'EMA weights, ' if ema else ''}config {cfg.name!r})")
    return model, cfg


def load_state(module: torch.nn.Module, state_dict: Any, *, source: str) -> None:
    """Load `state_dict` into `module` strictly. Missing or unexpected keys and tensors of another
    shape are a one-line ViewFusionError naming `source` and the first few of each (torch's own
    RuntimeError lists every key, over many lines, as a traceback)."""
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ViewFusionError(f"{source}: the weights are not a state dict (names -> tensors) but "
                              f"{type(state_dict).__name__}; regenerate the checkpoint")
    problems = _mismatches(module.state_dict(), state_dict)
    if problems:
        raise ViewFusionError(f"{source}: weights do not fit the model its config builds "
                              f"({'; '.join(problems)}); use the config they were trained with, or regenerate the file")
    module.load_state_dict(state_dict, strict=True)


def _mismatches(want: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor], shown: int = 3) -> list[str]:
    """'N missing: a, b, c, ...' and the like for unexpected keys and shapes (file vs model)."""
    groups = {
        "missing": [k for k in want if k not in got],
        "unexpected": [k for k in got if k not in want],
        "of another shape (file vs model)": [f"{k} {list(got[k].shape)} vs {list(v.shape)}"
                                             for k, v in want.items() if k in got and got[k].shape != v.shape],
    }
    return [f"{len(keys)} {what}: {', '.join(keys[:shown])}{', ...' if len(keys) > shown else ''}"
            for what, keys in groups.items() if keys]


def detect_variant(state: dict[str, torch.Tensor]) -> str:
    """paper / no_weighting / relative from the first and last conv shapes."""
    try:
        in_ch = state["denoise_fn.downs.0.weight"].shape[1]
        out_ch = state["denoise_fn.final_conv.block.3.weight"].shape[0]
    except KeyError as err:
        raise ViewFusionError(f"not a ViewFusion U-Net state dict: no {err}") from None
    for name, spec in VARIANTS.items():
        model = from_dict(spec, source=f"variant {name}").model
        if (model.in_channel, model.out_channel) == (in_ch, out_ch):
            return name
    raise ViewFusionError(f"U-Net with {in_ch} input / {out_ch} output channels matches no variant")


def convert_official(official: dict[str, Any], *, variant: str | None = None,
                     cfg: ExperimentConfig | None = None,
                     source: str = "official checkpoint") -> dict[str, Any]:
    """The official dict -> ours. The architecture is `cfg` (default: the paper config of the
    variant the U-Net shapes show); the state dict must load into it strictly. Adam's state is
    kept when it fits the parameters one to one."""
    state = strip_ddp(dict(official["model"]))
    found = detect_variant(state)
    if variant is not None and variant != found:
        raise ViewFusionError(f"{source}: --variant {variant} given, but its U-Net shapes are "
                              f"those of the {found!r} variant")
    if cfg is None:
        cfg = from_dict(VARIANTS[found], source=f"variant {found}")
    model = build_model(cfg)
    load_state(model, state, source=f"{source} (config {cfg.name!r})")
    meta = {k: _plain(official[k]) for k in ("it", "t", "run_id", "psnr", "ssim") if k in official}
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "model": model.state_dict(),
            "optimizer": _fitting_adam_state(official.get("optimizer"), model),
            "scheduler": None, "ema": None, "step": int(official.get("it", 0)),
            "config": to_dict(cfg), "rng": None, "world_size": None,
            "imported_from": {"source": source, **meta}}


def strip_ddp(state: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    """The state dict without the `module.` prefix the official trainer saved on multi-GPU runs."""
    if state and all(k.startswith("module.") for k in state):
        return {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, (np.generic, torch.Tensor)) else value


def _fitting_adam_state(opt: Any, model: torch.nn.Module) -> dict[str, Any] | None:
    """The official Adam state if every moment has its parameter's shape (same order), else None."""
    params = list(model.parameters())
    if not isinstance(opt, dict) or len(opt.get("param_groups", [])) != 1:
        return None
    if opt["param_groups"][0].get("params") != list(range(len(params))):
        return None
    for i, p in enumerate(params):
        s = opt.get("state", {}).get(i)
        if s is not None and s.get("exp_avg", p).shape != p.shape:
            return None
    return opt


# ---------------------------------------------------------------- loading as a model, any kind of file


def load_official(
    path_or_state_dict: str | PathLike | Mapping[str, torch.Tensor],
    unet_kwargs: Mapping | None = None,
    weighting: bool | None = None,
    *,
    clamp: tuple[float, float] | None | Literal["auto"] = "auto",
) -> ViewFusion:
    """A ready ViewFusion (eval mode, CPU) from an official checkpoint, ours, or a bare state dict.

    A checkpoint of this project (format "viewfusion-checkpoint", file or dict) carries its own
    config, and that config builds the model, prediction ("eps"/"v") and clamp included: the
    result samples exactly as `viewfusion.model.checkpoint.load_model(path)` (its raw, not EMA,
    weights). unet_kwargs/weighting/clamp given for it must agree with that config, else a
    ViewFusionError points at `load_model`.

    Official files and bare state dicts: unet_kwargs default to the paper config; in/out
    channels not given are read from the state dict (in 9 -> the relative variant).
    weighting=None: on when the denoiser outputs logits. clamp="auto": the official (-1, 1).
    The schedule is the one stored in the state dict (all sampling reads those buffers).
    """
    source = _describe(path_or_state_dict)
    obj = (path_or_state_dict if isinstance(path_or_state_dict, Mapping)
           else read(path_or_state_dict, numpy_scalars=True))
    if is_ours(obj):
        return _load_ours(as_ours(obj, source), source, unet_kwargs, weighting, clamp)
    return _load_state_dict(_state_dict(obj, source), source, unet_kwargs, weighting, clamp)


def _load_state_dict(state: Mapping[str, torch.Tensor], source: str, unet_kwargs, weighting, clamp) -> ViewFusion:
    """An official/bare state dict in the architecture unet_kwargs (+ the paper's) describe."""
    from viewfusion.model.diffusion import Schedule
    from viewfusion.model.unet import UNet
    from viewfusion.model.viewfusion import PAPER_UNET_KWARGS, ViewFusion

    for name in ("gammas", "denoise_fn.downs.0.weight", "denoise_fn.final_conv.block.3.weight"):
        if name not in state:
            raise ViewFusionError(f"{source} is not a ViewFusion state dict: no {name!r}")
    kwargs = {**PAPER_UNET_KWARGS, **(unet_kwargs or {})}
    if not unet_kwargs or "in_channel" not in unet_kwargs:
        kwargs["in_channel"] = state["denoise_fn.downs.0.weight"].shape[1]
    if not unet_kwargs or "out_channel" not in unet_kwargs:
        kwargs["out_channel"] = state["denoise_fn.final_conv.block.3.weight"].shape[0]
    flags = variant_flags(kwargs["in_channel"], kwargs["out_channel"])
    if flags is None:
        raise ViewFusionError(f"{source}: a U-Net with {kwargs['in_channel']} input / {kwargs['out_channel']} "
                              "output channels matches no ViewFusion variant")
    weighting = flags["weighting"] if weighting is None else weighting
    clamp = (-1.0, 1.0) if clamp == "auto" else clamp
    # Placeholder schedule of the right length; load_state then installs the stored one.
    schedule = Schedule.make("linear", n_timestep=state["gammas"].shape[0])
    model = ViewFusion(UNet(**kwargs), schedule, weighting=weighting, relative=flags["relative"], clamp=clamp)
    load_state(model, state, source=f"{source} (unet_kwargs {kwargs})")
    return model.eval()


def _load_ours(ckpt: Mapping, source: str, unet_kwargs, weighting, clamp) -> ViewFusion:
    """Our checkpoint with its own config; arguments may only repeat what that config says."""
    cfg = config_of(ckpt, source=source)
    own = cfg.model.unet_kwargs()
    given = {f"unet_kwargs[{k!r}]": (_as_list(v), own.get(k, "not set")) for k, v in (unet_kwargs or {}).items()}
    if weighting is not None:
        given["weighting"] = (weighting, cfg.model.weighting)
    if clamp != "auto":
        given["clamp"] = (check_clamp(clamp), cfg.model.clamp)
    bad = [f"{name}={mine!r}, its config: {theirs!r}" for name, (mine, theirs) in given.items() if mine != theirs]
    if bad:
        raise ViewFusionError(
            f"{source} is a viewfusion checkpoint with its own config {cfg.name!r}, which the arguments "
            f"contradict ({'; '.join(bad)}); leave them out, or load it with viewfusion.model.checkpoint.load_model")
    model, _ = model_of(ckpt, source=source)
    return model.eval()


def _as_list(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def _describe(source) -> str:
    return "the given state dict" if isinstance(source, Mapping) else str(source)


def _state_dict(obj, source: str) -> Mapping[str, torch.Tensor]:
    """The state dict in what a file or mapping holds: an official checkpoint (key `model`) or bare."""
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ViewFusionError(f"{source} is neither a state dict nor a checkpoint with key 'model'")
    return strip_ddp(obj)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("official", type=Path, help="the official best_model_all.pt")
    parser.add_argument("out", type=Path, help="where to write the converted checkpoint")
    parser.add_argument("--variant", choices=sorted(VARIANTS), default=None,
                        help="expected variant (default: read from the U-Net shapes)")
    parser.add_argument("--config", type=Path, default=None,
                        help="experiment YAML of the weights' architecture "
                             "(default: config/experiments/<variant>.yaml's values)")


def run(args: argparse.Namespace) -> int:
    raw = read(args.official, numpy_scalars=True)
    if not is_official(raw):
        raise ViewFusionError(f"{args.official} is not an official ViewFusion checkpoint "
                              "(expected a dict with keys model, optimizer, it, ...)")
    cfg = load_config(args.config) if args.config else None
    ckpt = convert_official(raw, variant=args.variant, cfg=cfg, source=str(args.official))
    save(args.out, ckpt)
    print(f"{args.out}: config {ckpt['config']['name']!r}, step {ckpt['step']}, "
          f"optimizer state {'kept' if ckpt['optimizer'] else 'dropped (does not fit)'}")
    return 0
