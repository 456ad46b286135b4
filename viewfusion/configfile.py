"""Config files: a YAML file, its `base:` ancestors and `--set` overrides -> an ExperimentConfig.

    from viewfusion.configfile import load_config
    cfg = load_config("config/experiments/tiny.yaml", overrides=["train.max_steps=10"])

Each layer (a file, or one override) is checked on its own by `config.check_layer`, so an error
names the file or override it is in; layers merge key by key, the child's keys winning.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

from viewfusion.bounded import load_yaml, loads_yaml
from viewfusion.config import SECTIONS, ExperimentConfig, check_layer, from_dict, unknown_key
from viewfusion.errors import ViewFusionError


def _merge(base: dict, top: dict) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for key, value in top.items():
        out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
    return out


def _read_chain(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The merged layers of `path` and its `base:` ancestors, each checked on its own."""
    path = path.resolve()
    if path in seen:
        raise ViewFusionError(f"{path}: `base:` chain loops back to itself")
    try:
        raw = load_yaml(path)
    except FileNotFoundError:
        raise ViewFusionError(f"config file {path} does not exist") from None
    if raw is None:  # empty or only comments: would silently mean the whole paper config
        raise ViewFusionError(f"{path}: the file is empty (or holds only comments); write the keys "
                              "that differ, under `base: paper.yaml` for the paper config")
    if not isinstance(raw, dict):
        raise ViewFusionError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    base = raw.pop("base", None)
    layer = check_layer(raw, str(path))
    if base is None:
        return layer
    if not isinstance(base, str):
        raise ViewFusionError(f"{path}: base must be a file name, got {base!r}")
    return _merge(_read_chain(path.parent / base, seen + (path,)), layer)


def parse_override(text: str) -> dict[str, Any]:
    """`train.max_steps=10` -> {"train": {"max_steps": 10}} (the value is parsed as YAML)."""
    source = f"--set {text if len(text) <= 100 else text[:80] + f'... ({len(text):,} characters)'}"
    key, eq, value = text.partition("=")
    if not eq:
        raise ViewFusionError(f"{source}: expected key=value, e.g. train.max_steps=10")
    parts = key.strip().split(".")
    parsed = loads_yaml(value, source)
    raw = {parts[0]: parsed} if len(parts) == 1 else {parts[0]: {".".join(parts[1:]): parsed}}
    if len(parts) > 2 or (len(parts) == 2 and parts[0] not in SECTIONS):
        raise unknown_key(key.strip(), source)
    return check_layer(raw, source)


def written_layers(path: str | Path, overrides: typing.Iterable[str] = ()) -> dict[str, Any]:
    """The keys the files of the `base:` chain and the overrides set, merged and checked, before
    any default: what a user wrote."""
    merged = _read_chain(Path(path))
    for text in overrides:
        merged = _merge(merged, parse_override(text))
    return merged


def load_config(path: str | Path, overrides: typing.Iterable[str] = ()) -> ExperimentConfig:
    overrides = list(overrides)
    source = str(path) + "".join(f" --set {o}" for o in overrides)
    return from_dict(written_layers(path, overrides), source=source)


def written_sha256(path: str | Path, overrides: typing.Iterable[str] = ()) -> str:
    """Fingerprint of what the config files and overrides set (`written_layers`), the workflow's
    retrain trigger: a new code version that adds a key with its default does not retrain
    finished runs (their checkpoints record the full resolved config either way)."""
    from viewfusion.fsutil import sha256_json

    return sha256_json(written_layers(path, overrides))
