"""The workflow config and profile as Snakemake reads them, for commands that run outside
Snakemake (`viewfusion plan`): config files merged over the base with the schema's defaults,
validated against it as Snakemake validates them, and a profile's settings and runtimes. Torch-free.

    config = load_workflow_config([Path("config/paper_workflow.yaml")], Path("config/config.yaml"),
                                  Path("workflow/schemas/config.schema.yaml"))
    profile_minutes(Path("profiles/slurm"))   # {"sample": 240, "train": 2880, "warning_s": 600, ...}
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from viewfusion.bounded import MAX_YAML_BYTES, load_yaml, loads_yaml, read_bounded
from viewfusion.errors import ViewFusionError

# Runtimes when no profile says otherwise (minutes): a sampling chunk, one training allocation.
DEFAULT_SAMPLE_MINUTES = 240
DEFAULT_TRAIN_MINUTES = 48 * 60


def merge(base: Any, top: Any) -> Any:
    """Snakemake's config merge: mappings merge key by key, everything else replaces."""
    if isinstance(base, dict) and isinstance(top, dict):
        return {**base, **{k: merge(base.get(k), v) if k in base else v for k, v in top.items()}}
    return top


def with_defaults(value: Any, schema: dict) -> Any:
    """Fill the schema's defaults into `value` (objects and their properties, recursively)."""
    if value is None and "default" in schema:
        value = schema["default"]
    if isinstance(value, dict):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        out = dict(value)
        for key, sub in props.items():
            if key not in out and "default" in sub:
                out[key] = sub["default"]
        return {k: with_defaults(v, props.get(k, extra if isinstance(extra, dict) else {})) for k, v in out.items()}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [with_defaults(v, schema["items"]) for v in value]
    return value


def _read_yaml(path: Path) -> Any:
    try:
        return load_yaml(path)
    except FileNotFoundError:
        raise ViewFusionError(f"{path} does not exist") from None


def read_profile(profile: Path) -> tuple[Path, Any]:
    """(the file, its settings) of a Snakemake profile file or folder (a YTE template, as
    profiles/slurm; `yte` comes with Snakemake)."""
    path = profile / "config.yaml" if profile.is_dir() else profile
    try:
        text = read_bounded(path, MAX_YAML_BYTES, f"profile {path}")
    except FileNotFoundError:
        raise ViewFusionError(f"profile {path} does not exist") from None
    data = loads_yaml(text, f"profile {path}")  # bounded (size, depth, aliases) before YTE walks it
    try:
        import yte

        data = yte.process_yaml(text.decode("utf-8", errors="replace"), require_use_yte=True)
    except ImportError:
        pass
    if not isinstance(data, dict | None):
        raise ViewFusionError(f"profile {path}: expected a mapping of Snakemake options")
    return path, data


def check_whole_numbers(value: Any, schema: dict, where: str = "") -> None:
    """Refuse a float where the schema asks for an integer only: JSON Schema's `integer` admits
    26.0, which then names a v26.0 folder or fails deep in a job (range(26.0), a batch of 32.0)."""
    if isinstance(value, dict):
        props, extra = schema.get("properties", {}), schema.get("additionalProperties")
        for key, item in value.items():
            sub = props.get(key, extra if isinstance(extra, dict) else {})
            check_whole_numbers(item, sub, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_whole_numbers(item, schema.get("items", {}), f"{where}[{index}]")
    elif isinstance(value, float):
        kinds = [schema.get("type")] + [alt.get("type") for alt in schema.get("anyOf", [])]
        wanted = {t for k in kinds for t in (k if isinstance(k, list) else [k])}
        if "integer" in wanted and "number" not in wanted:
            raise ViewFusionError(f"{where}: {value!r} must be a whole number written as one (e.g. "
                                  f"{int(value) if value.is_integer() else round(value)})")


def validate_config(config: dict, schema: dict, where: str) -> None:
    """Refuse, in one line, what Snakemake's `validate(config, schema)` refuses (JSON Schema 2020-12)."""
    import jsonschema

    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(config))
    if error is not None:
        at = ".".join(map(str, error.absolute_path)) or "top level"
        raise ViewFusionError(f"{where}: {at}: {' '.join(error.message.split())}")
    check_whole_numbers(config, schema)


def load_workflow_config(configfiles: list[Path], base: Path | None, schema: Path | None) -> dict:
    config: dict = {}
    for path in ([base] if base else []) + list(configfiles):
        layer = _read_yaml(path)
        if not isinstance(layer, dict):
            raise ViewFusionError(f"{path}: expected a mapping")
        config = merge(config, layer)
    if schema is not None:
        rules = _read_yaml(schema)
        config = with_defaults(config, rules)
        sources = " + ".join(map(str, ([base] if base else []) + list(configfiles)))
        validate_config(config, rules, f"{sources} against {schema}")
    for key in ("experiments", "active_experiments", "shard_sets"):
        if key not in config:
            raise ViewFusionError(f"the workflow config has no {key!r} (give config/config.yaml as --base)")
    return config


# What a profile's runtime may say: N, "N * attempt" or "attempt * N" (minutes); a year at most.
_RUNTIME = re.compile(r"\s*(?:(\d{1,7})(?:\s*\*\s*attempt)?|attempt\s*\*\s*(\d{1,7}))\s*")
MAX_RUNTIME_MINUTES = 366 * 24 * 60


def runtime_minutes(value: Any, where: str) -> int:
    """A profile's runtime (minutes, or minutes times `attempt` such as "240 * attempt") on the
    first attempt: what the plan and the workflow's chunk sizing budget a job with. Parsed, never
    evaluated: `eval` of a profile's "9**9**9" would never return."""
    match = _RUNTIME.fullmatch(str(value))
    minutes = int(match.group(1) or match.group(2)) if match else 0
    if not 0 < minutes <= MAX_RUNTIME_MINUTES:
        raise ViewFusionError(f"{where}.runtime {value!r} is not a positive number of minutes (N, or N * attempt, "
                              f"at most {MAX_RUNTIME_MINUTES})")
    return minutes


def profile_minutes(profile: Path | None) -> dict[str, Any]:
    """The sample and train runtimes (minutes, attempt 1) and the train warning (seconds) of a
    Snakemake profile (profiles/slurm is a YTE template; `yte` comes with Snakemake)."""
    out = {"profile": None, "sample": DEFAULT_SAMPLE_MINUTES, "train": DEFAULT_TRAIN_MINUTES, "warning_s": 0,
           "groups": {}, "group_components": {}}
    if profile is None:
        return out
    path, data = read_profile(profile)
    resources = (data or {}).get("set-resources", {}) or {}

    def minutes(rule: str, default: int) -> int:
        return runtime_minutes((resources.get(rule) or {}).get("runtime", default), f"{path}: set-resources.{rule}")

    extra = str((resources.get("train") or {}).get("slurm_extra", ""))
    warning = next((int(w.split("@", 1)[1]) for w in extra.split() if w.startswith("--signal=") and "@" in w), 0)
    return {"profile": str(path), "sample": minutes("sample", DEFAULT_SAMPLE_MINUTES),
            "train": minutes("train", DEFAULT_TRAIN_MINUTES), "warning_s": warning,
            "groups": _pairs(data, "groups", str, path),
            "group_components": _pairs(data, "group-components", int, path)}


def _pairs(data: dict, key: str, kind: type, path: Path) -> dict[str, Any]:
    """A profile's `groups` (rule=group) or `group-components` (group=N) list as a dict."""
    out = {}
    for item in (data or {}).get(key) or []:
        name, sep, value = str(item).partition("=")
        try:
            out[name.strip()] = kind(value.strip())
        except ValueError:
            sep = ""
        if not sep:
            raise ViewFusionError(f"{path}: {key} entry {item!r} is not name=value")
    return out
