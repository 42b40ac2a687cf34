"""The driver: python -m experiments.run CONFIG [key=value ...] [--run-dir DIR]

CONFIG is a module in experiments/configs (e.g. ``lm_tiny``) or a path to a .py file. A config module defines
``config()`` returning a frozen dataclass (fields may be dataclasses too), ``run(cfg, run_dir)`` doing the work,
and optionally ``RESUMABLE``, the keys a resumed run may change (such as the number of steps), and
``validate(cfg)``, which raises ValueError for a config that cannot run (reported before anything is written).
How a run executes (mesh, multi-host set-up, checkpoint interval, vocabulary chunking) is every config's field
``settings`` (``stages.RunSettings``): ``settings.mesh.fsdp=4``, ``settings.save_every=50``.

Overrides use dotted keys (``optimizer.learning_rate=3e-4``, ``settings.mesh.data=2``) and are parsed by the field's
type; a wrong key or value gets an error that lists the valid keys or the expected type. Everything a run
writes goes into one run folder (default runs/CONFIG-TIMESTAMP): config.json, metrics.jsonl, checkpoints/ and
the results. Pointing --run-dir at an existing run folder resumes it with its saved config.

``tracker=tensorboard,wandb`` (not a config field: it changes where metrics go, not what the run computes)
selects the trackers every training stage logs to besides metrics.jsonl (``jax_irl.tracking``; default
``tensorboard``; ``wandb`` runs offline in each stage's folder unless WANDB_MODE says otherwise).
"""

from __future__ import annotations

import argparse
import collections.abc
import dataclasses
import importlib
import importlib.util
import json
import math
import os
import sys
import time
import typing
from typing import Any, Dict, List, Optional

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
RUN_FILE = "run.json"  # names the config a run folder belongs to


class ConfigError(ValueError):
    pass


def available_configs() -> List[str]:
    return sorted(f[:-3] for f in os.listdir(CONFIG_DIR) if f.endswith(".py") and not f.startswith("_"))


def load_config_module(name: str):
    if name.endswith(".py"):
        if not os.path.exists(name):
            raise ConfigError(f"config file {name} does not exist")
        spec = importlib.util.spec_from_file_location(os.path.basename(name)[:-3], name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        if name not in available_configs():
            raise ConfigError(f"unknown config {name!r}; available: {', '.join(available_configs())}")
        module = importlib.import_module(f"experiments.configs.{name}")
    for attr in ("config", "run"):
        if not callable(getattr(module, attr, None)):
            raise ConfigError(f"config module {name} must define {attr}()")
    return module


def _variant_type(tp):
    """The value type V of a ``Dict[str, V]`` field whose values are dataclasses (named variants), else None."""
    if typing.get_origin(tp) in (dict, typing.Dict, collections.abc.Mapping) and len(typing.get_args(tp)) == 2:
        value = typing.get_args(tp)[1]
        if dataclasses.is_dataclass(value):
            return value
    return None


def _walk(cfg, prefix: str, variants: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    hints = typing.get_type_hints(type(cfg))
    out = {}
    for f in dataclasses.fields(cfg):
        value, key = getattr(cfg, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out.update(_walk(value, key + ".", variants))
        elif _variant_type(hints[f.name]) is not None:
            if variants is not None:
                variants[key] = _variant_type(hints[f.name])
            for name, variant in value.items():
                out.update(_walk(variant, f"{key}.{name}.", variants))
        else:
            out[key] = hints[f.name]
    return out


def flat_fields(cfg, prefix: str = "") -> Dict[str, Any]:
    """Dotted key -> declared type for every leaf field of a (nested) dataclass. A ``Dict[str, Dataclass]``
    field (named variants, e.g. methods) contributes ``field.<name>.<leaf>`` for each of its entries."""
    return _walk(cfg, prefix, None)


def variant_fields(cfg) -> Dict[str, Any]:
    """Dotted key -> value type of every named-variants field (``Dict[str, Dataclass]``), nested ones too."""
    found: Dict[str, Any] = {}
    _walk(cfg, "", found)
    return found


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def parse_value(text: str, tp, key: str):
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if text.lower() in ("none", "null"):
            return None
        inner = [a for a in args if a is not type(None)]
        return parse_value(text, inner[0], key)
    if origin in (tuple, list):
        items = [t for t in text.strip("()[]").split(",") if t.strip()]
        elem = args[0] if args else str
        return tuple(parse_value(t.strip(), elem, key) for t in items)
    try:
        if tp is bool:
            if text.lower() in ("true", "1", "yes"):
                return True
            if text.lower() in ("false", "0", "no"):
                return False
            raise ValueError(text)
        if tp is int:
            return int(text)
        if tp is float:
            return float(text)
        if tp is str:
            return text
    except ValueError:
        raise ConfigError(f"{key}={text!r}: expected a value of type {_type_name(tp)}") from None
    raise ConfigError(f"{key}: fields of type {_type_name(tp)} cannot be set from the command line")


def _variant_split(cfg, field: str, vtype, key: str):
    """(name, leaf path) of ``key`` under the named-variants field ``field``, or None. A variant's name may hold
    dots ('iqlearn:0.1') and its leaf may be nested ('gail.policy.iterations'): an existing variant's name wins
    (the longest that fits), else the longest name whose remainder starts with a field of ``vtype``."""
    if not key.startswith(field + "."):
        return None
    rest = key[len(field) + 1:]
    current = cfg
    for part in field.split("."):
        current = getattr(current, part)
    known = [n for n in current if rest.startswith(n + ".")]
    if known:
        name = max(known, key=len)
        return name, rest[len(name) + 1:].split(".")
    fields = {f.name for f in dataclasses.fields(vtype)}
    parts = rest.split(".")
    for i in range(len(parts) - 1, 0, -1):
        if parts[i] in fields:
            return ".".join(parts[:i]), parts[i:]
    return None


def _split_key(cfg, key: str) -> List[str]:
    """The path of a dotted key; a variant's name (which may hold dots, as in 'iqlearn:0.1') is one element."""
    for field, vtype in sorted(variant_fields(cfg).items(), key=lambda kv: -len(kv[0])):
        found = _variant_split(cfg, field, vtype, key)
        if found:
            return field.split(".") + [found[0]] + found[1]
    return key.split(".")


def _set(cfg, path: List[str], value):
    if isinstance(cfg, dict):  # a named-variants field: path[0] is the variant's name
        return {**cfg, path[0]: _set(cfg[path[0]], path[1:], value)}
    if len(path) == 1:
        return dataclasses.replace(cfg, **{path[0]: value})
    child = getattr(cfg, path[0])
    return dataclasses.replace(cfg, **{path[0]: _set(child, path[1:], value)})


def _add_variant(cfg, key: str):
    """cfg with a new default variant when ``key`` names a leaf of an unknown variant (``methods.mine.kind``)."""
    for field, vtype in sorted(variant_fields(cfg).items(), key=lambda kv: -len(kv[0])):
        found = _variant_split(cfg, field, vtype, key)
        if found:
            name, _ = found
            current = cfg
            for part in field.split("."):
                current = getattr(current, part)
            if name not in current:
                return _set(cfg, field.split("."), {**current, name: vtype()})
    return None


class _Changes(dict):
    """Overrides grouped by the (nested) dataclass or variants field they change."""


def _apply(cfg, changes: "_Changes"):
    """cfg with ``changes`` applied, each dataclass rebuilt once with all of its changed fields (so checks that
    tie two fields together, such as warmup_steps <= steps, see both new values whatever the overrides' order)."""
    if isinstance(cfg, dict):
        return {**cfg, **{name: _apply(cfg[name], sub) for name, sub in changes.items()}}
    updates = {k: _apply(getattr(cfg, k), v) if isinstance(v, _Changes) else v for k, v in changes.items()}
    return dataclasses.replace(cfg, **updates)


def apply_overrides(cfg, overrides: List[str]):
    """A new config with every ``key=value`` applied; errors list the valid keys or the expected type. A key
    ``field.NAME.leaf`` under a named-variants field with a NAME not yet there adds variant NAME (its defaults,
    then the override). Values are checked by the dataclasses' own validation once all are applied."""
    changes = _Changes()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        fields = flat_fields(cfg)
        if key not in fields and key.startswith("lora.") and "base." + key in fields:
            key = "base." + key  # lora.rank=16: the LoRA settings of the experiment's base model
        if key not in fields:
            try:
                added = _add_variant(cfg, key)
            except (ValueError, TypeError) as err:
                raise ConfigError(f"{key}: {err}") from None
            if added is None:
                raise ConfigError(f"unknown config key {key!r}; valid keys:\n  " + "\n  ".join(sorted(fields)))
            cfg, fields = added, flat_fields(added)
        path = _split_key(cfg, key)
        node = changes
        for part in path[:-1]:
            node = node.setdefault(part, _Changes())
        value = parse_value(text, fields[key], key)
        _check_finite(cfg, path, key, value)
        node[path[-1]] = value
    try:
        return _apply(cfg, changes)
    except (ValueError, TypeError) as err:  # the dataclasses' own validation
        raise ConfigError(f"{' '.join(overrides)}: {err}") from None


def _check_finite(cfg, path: List[str], key: str, value) -> None:
    """A float override must be a number: NaN never is, and infinity only where the field already holds one (a
    config that means 'no limit' by inf)."""
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if isinstance(v, float) and not math.isfinite(v):
            current = cfg
            for part in path:
                current = current.get(part) if isinstance(current, dict) else getattr(current, part, None)
            currents = current if isinstance(current, tuple) else (current,)
            if math.isnan(v) or not any(isinstance(c, float) and c == v for c in currents):
                raise ConfigError(f"{key}={v}: expected a finite number")


# Run settings that configs held as top-level fields before they moved into ``settings`` (a config.json of such
# a run is read with them moved).
_SETTINGS_FIELDS = ("mesh", "distributed", "save_every", "keep", "vocab_chunk")


def _moved_settings(saved: Dict[str, Any]) -> Dict[str, Any]:
    if "settings" in saved or not any(k in saved for k in _SETTINGS_FIELDS):
        return saved
    out = {k: v for k, v in saved.items() if k not in _SETTINGS_FIELDS}
    out["settings"] = {k: saved[k] for k in _SETTINGS_FIELDS if k in saved}
    return out


def to_overrides(saved: Dict[str, Any], prefix: str = "") -> List[str]:
    """A saved config.json back as key=value overrides (run settings saved at the top level, as configs once held
    them, are read under ``settings``)."""
    if not prefix:
        saved = _moved_settings(saved)
    out = []
    for key, value in saved.items():
        if isinstance(value, dict):
            out += to_overrides(value, f"{prefix}{key}.")
        elif isinstance(value, (list, tuple)):
            out.append(f"{prefix}{key}=({','.join(str(v) for v in value)})")
        else:
            out.append(f"{prefix}{key}={value}")
    return out


# The range of every numeric config field, by its name (the same name means the same thing in every config),
# checked by the driver over the whole config before anything is written: (test, what it must be).
_AT_LEAST_1 = (lambda v: v >= 1, "an integer >= 1")
_AT_LEAST_0 = (lambda v: v >= 0, ">= 0")
_POSITIVE = (lambda v: v > 0, "> 0")
_UNIT = (lambda v: 0 <= v <= 1, "in [0, 1]")
RANGES = {
    **{name: _AT_LEAST_1 for name in (
        "batch_pairs", "batch_size", "bon_samples", "calculations_per_row", "candidates", "check_workers",
        "epochs", "eval_every", "eval_examples", "eval_problems", "eval_samples", "grad_accum_steps", "group_size",
        "heads", "hidden_size", "intermediate_size", "iterations", "keep", "kl_horizon", "max_length",
        "max_new_tokens", "max_number", "max_operand", "max_positions", "minibatches", "num_heads", "num_kv_heads",
        "num_layers", "num_processes", "num_samples", "overlong_buffer", "pairs", "prompts_per_batch",
        "prompts", "prompts_per_rollout", "prompts_per_round", "rounds", "rows_per_score", "samples_per_prompt", "save_every",
        "sample_prompts_per_batch",
        "total_steps", "train_examples", "train_problems", "vocab_chunk", "vocab_size")},
    **{name: _AT_LEAST_0 for name in (
        "steps", "calculation_rows", "policy_prompts", "warmup_steps", "max_refills", "seed", "process_id",
        "entropy_bonus", "entropy_coef", "kl_coef", "nll_weight", "pessimism", "td_weight", "vf_coef",
        "weight_decay", "overlong_penalty", "temperature")},
    **{name: _POSITIVE for name in (
        "beta", "clip_eps", "value_clip_eps", "clip_low", "clip_high", "max_grad_norm", "learning_rate", "eps",
        "kl_target")},
    **{name: _UNIT for name in ("gamma", "lam", "alpha", "b1", "b2")},
    "label_smoothing": (lambda v: 0 <= v < 0.5, "in [0, 0.5)"),
    "lora.alpha": _POSITIVE, "lora.rank": _AT_LEAST_0, "lora.dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    # mesh axes: a size, or -1 for 'the rest of the devices'
    **{name: (lambda v: v >= 1 or v == -1, "an integer >= 1, or -1 for the rest of the devices")
       for name in ("data", "fsdp", "tensor")},
}


def range_rule(key: str):
    """The ``RANGES`` rule of a dotted key: one for 'owner.leaf' (lora.alpha) over the leaf name's (alpha)."""
    return RANGES.get(".".join(key.split(".")[-2:]), RANGES.get(key.rsplit(".", 1)[-1]))


def _check_ranges(cfg) -> None:
    """Every numeric field named in ``RANGES`` (None where optional means 'not set' and passes), in the config
    and its variants; the first one out of range is refused, naming its key."""
    for key, tp in flat_fields(cfg).items():
        rule = range_rule(key)
        if rule is None:
            continue
        value = cfg
        for part in _split_key(cfg, key):
            value = value[part] if isinstance(value, dict) else getattr(value, part)
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if not rule[0](v):
                raise ConfigError(f"{key} must be {rule[1]}; got {v!r}")


def _check_run_settings(cfg) -> None:
    """Fields every config may have (save_every, keep) that only the Checkpointer would check, after writing."""
    for key, tp in flat_fields(cfg).items():
        name = key.rsplit(".", 1)[-1]
        if name in ("save_every", "keep") and tp is int:
            value = cfg
            for part in _split_key(cfg, key):
                value = value[part] if isinstance(value, dict) else getattr(value, part)
            if value < 1:
                raise ConfigError(f"{key} must be >= 1; got {value}")


def resolve(name: str, overrides: List[str], run_dir: str = None):
    """(module, config, run_dir, resuming). Checks everything it can before anything is written: a run folder
    that is a file or belongs to another config, overrides a resume may not change, the config's own checks."""
    module = load_config_module(name)
    cfg = module.config()
    base = os.path.basename(name)[:-3] if name.endswith(".py") else name
    if run_dir is not None and os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ConfigError(f"--run-dir {run_dir} is a file, not a run folder")
    resuming = run_dir is not None and os.path.exists(os.path.join(run_dir, "config.json"))
    if resuming:
        marker = os.path.join(run_dir, RUN_FILE)
        if os.path.exists(marker):
            with open(marker) as f:
                owner = json.load(f).get("config")
            if owner != base:
                raise ConfigError(f"{run_dir} is a run folder of config {owner!r}, not {base!r}: run "
                                  f"`python -m experiments.run {owner} --run-dir {run_dir}` to resume it")
        try:
            with open(os.path.join(run_dir, "config.json")) as f:
                saved = json.load(f)
            saved_cfg = apply_overrides(cfg, to_overrides(saved))
        except (json.JSONDecodeError, ConfigError) as err:
            raise ConfigError(f"{run_dir}/config.json does not fit config {base!r} (is the folder another "
                              f"config's run?): {err}") from None
        allowed = tuple(getattr(module, "RESUMABLE", ()))
        refused = []
        for item in overrides:
            key = item.split("=", 1)[0]
            if any(key == a or key.startswith(a + ".") for a in allowed):
                continue
            if apply_overrides(saved_cfg, [item]) != saved_cfg:  # an override that repeats the saved value is fine
                refused.append(key)
        if refused:
            raise ConfigError(f"{run_dir} is an existing run; only {sorted(allowed)} may change when resuming, not "
                              f"{refused}")
        cfg = saved_cfg
    cfg = apply_overrides(cfg, overrides)
    _check_run_settings(cfg)
    _check_ranges(cfg)
    if hasattr(module, "validate"):  # checks that need the whole config, before anything is written
        try:
            module.validate(cfg)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if run_dir is None:
        run_dir = os.path.join("runs", f"{base}-{time.strftime('%Y%m%d-%H%M%S')}")
    return module, cfg, run_dir, resuming


def _write_json(path: str, value) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=2)
    os.replace(path + ".tmp", path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help=f"one of: {', '.join(available_configs())}, or a .py file")
    parser.add_argument("overrides", nargs="*", help="key=value")
    parser.add_argument("--run-dir", default=None)
    args = parser.parse_args(argv)
    from jax_irl import tracking

    trackers = [item.split("=", 1)[1] for item in args.overrides if item.startswith("tracker=")]
    overrides = [item for item in args.overrides if not item.startswith("tracker=")]
    try:
        trackers = tracking.parse(trackers[-1] if trackers else "tensorboard")
    except ValueError as err:
        print(f"error: tracker={trackers[-1]}: {err}", file=sys.stderr)
        return 2
    try:
        module, cfg, run_dir, resuming = resolve(args.config, overrides, args.run_dir)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from jax_irl import parallel

    # Multi-host: the config's `distributed` fields, else JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
    # JAX_PROCESS_ID; a no-op for one process. It must run before any JAX computation.
    settings = getattr(cfg, "settings", None)
    parallel.initialize_distributed(settings.distributed if settings is not None else parallel.DistributedConfig())
    import jax

    if jax.process_count() > 1 and args.run_dir is None:
        print("error: a multi-host run needs --run-dir on storage that every host shares", file=sys.stderr)
        return 2
    os.makedirs(run_dir, exist_ok=True)
    parallel.enable_compilation_cache(os.path.join(run_dir, "xla_cache"))
    resolved = dataclasses.asdict(cfg)
    base = os.path.basename(args.config)[:-3] if args.config.endswith(".py") else args.config
    if jax.process_index() == 0 and not resuming:
        _write_json(os.path.join(run_dir, RUN_FILE), {"config": base})
        _write_json(os.path.join(run_dir, "config.json"), resolved)
    print(f"{'resuming' if resuming else 'starting'} {args.config} in {run_dir}")
    print(json.dumps(resolved, indent=2))
    finished = False
    try:
        with tracking.use_trackers(trackers, config=resolved):
            module.run(cfg, run_dir)
        finished = True
    finally:
        # A resumed run's config.json changes (for the resumable keys) only once the run got through: a resume
        # refused by a checkpoint or a result check leaves the folder as it was.
        if resuming and jax.process_index() == 0 and (finished or _stopped_cleanly()):
            _write_json(os.path.join(run_dir, "config.json"), resolved)
    return 0


def _stopped_cleanly() -> bool:
    """Whether the exception on its way out is a preemption after saving (so the resumed settings stay)."""
    from jax_irl.stages import StagePreempted

    return isinstance(sys.exc_info()[1], StagePreempted)


if __name__ == "__main__":
    sys.exit(main())
