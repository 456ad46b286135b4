"""Checkpoints: explicit dicts, atomic writes, `weights_only` loads, and the official import.

A checkpoint is a plain dict saved with `torch.save` (docs/FORMATS.md):

    {"format": "viewfusion-checkpoint", "format_version": 1,
     "model": ViewFusion state dict (official names: denoise_fn.* + 6 schedule buffers),
     "optimizer": Adam state dict | None, "scheduler": LambdaLR state dict | None,
     "ema": {"decay", "n_averaged", "model": state dict} | None,
     "step": optimizer steps done, "config": viewfusion.config.to_dict(cfg),
     "rng": [per-rank RNG states, rank order] | None, "world_size": int | None,
     "imported_from": {...} (only in files made by import-official)}

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
from pathlib import Path
from typing import Any

import numpy as np
import torch

from viewfusion.config import ExperimentConfig, build_model, from_dict, load_config, to_dict
from viewfusion.errors import ViewFusionError
from viewfusion.fsutil import atomic_path

FORMAT = "viewfusion-checkpoint"
FORMAT_VERSION = 1
REQUIRED = frozenset({"format", "format_version", "model", "step", "config"})
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
    """Atomically write `ckpt` (a complete checkpoint dict) to `path`."""
    missing = REQUIRED - ckpt.keys()
    if missing:
        raise ValueError(f"checkpoint dict lacks {sorted(missing)}")
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def read(path: str | Path, *, numpy_scalars: bool = False) -> Any:
    """Whatever a checkpoint file holds (ours, official, a bare state dict), loaded with
    `weights_only=True` (numpy_scalars: also the official file's metric scalars); the one reader of
    checkpoint files, with one-line errors for a missing, truncated or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise ViewFusionError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):
        head = path.read_bytes()[:16]
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
    table = {(6, 6): "paper", (6, 3): "no_weighting", (9, 6): "relative"}
    if (in_ch, out_ch) not in table:
        raise ViewFusionError(f"U-Net with {in_ch} input / {out_ch} output channels matches no variant")
    return table[(in_ch, out_ch)]


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
