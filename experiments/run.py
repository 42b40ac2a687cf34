"""The driver: python -m experiments.run CONFIG [key=value ...] [--run-dir DIR]

CONFIG is a module in experiments/configs (e.g. ``lm_tiny``) or a path to a .py file. A config module defines
``config()`` returning a frozen dataclass (fields may be dataclasses too), ``run(cfg, run_dir)`` doing the work,
and optionally ``RESUMABLE``, the keys a resumed run may change (such as the number of steps), and
``validate(cfg)``, which raises ValueError for a config that cannot run (reported before anything is written).

Overrides use dotted keys (``optimizer.learning_rate=3e-4``, ``mesh.data=2``) and are parsed by the field's
type; a wrong key or value gets an error that lists the valid keys or the expected type. Everything a run
writes goes into one run folder (default runs/CONFIG-TIMESTAMP): config.json, metrics.jsonl, checkpoints/ and
the results. Pointing --run-dir at an existing run folder resumes it with its saved config.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import os
import sys
import time
import typing
from typing import Any, Dict, List

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


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


def flat_fields(cfg, prefix: str = "") -> Dict[str, Any]:
    """Dotted key -> declared type for every leaf field of a (nested) dataclass."""
    hints = typing.get_type_hints(type(cfg))
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update(flat_fields(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = hints[f.name]
    return out


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


def _set(cfg, path: List[str], value):
    if len(path) == 1:
        return dataclasses.replace(cfg, **{path[0]: value})
    child = getattr(cfg, path[0])
    return dataclasses.replace(cfg, **{path[0]: _set(child, path[1:], value)})


def apply_overrides(cfg, overrides: List[str]):
    """A new config with each ``key=value`` applied; errors list the valid keys or the expected type."""
    fields = flat_fields(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, text = item.split("=", 1)
        if key not in fields:
            raise ConfigError(f"unknown config key {key!r}; valid keys:\n  " + "\n  ".join(sorted(fields)))
        try:
            cfg = _set(cfg, key.split("."), parse_value(text, fields[key], key))
        except ConfigError:
            raise
        except (ValueError, TypeError) as err:  # the dataclass's own validation
            raise ConfigError(f"{key}={text!r}: {err}") from None
    return cfg


def to_overrides(saved: Dict[str, Any], prefix: str = "") -> List[str]:
    """A saved config.json back as key=value overrides."""
    out = []
    for key, value in saved.items():
        if isinstance(value, dict):
            out += to_overrides(value, f"{prefix}{key}.")
        elif isinstance(value, (list, tuple)):
            out.append(f"{prefix}{key}=({','.join(str(v) for v in value)})")
        else:
            out.append(f"{prefix}{key}={value}")
    return out


def resolve(name: str, overrides: List[str], run_dir: str = None):
    """(module, config, run_dir, resuming)."""
    module = load_config_module(name)
    cfg = module.config()
    resuming = run_dir is not None and os.path.exists(os.path.join(run_dir, "config.json"))
    if resuming:
        with open(os.path.join(run_dir, "config.json")) as f:
            saved = json.load(f)
        cfg = apply_overrides(cfg, to_overrides(saved))
        allowed = tuple(getattr(module, "RESUMABLE", ()))
        keys = [o.split("=", 1)[0] for o in overrides]
        changed = [k for k in keys if not any(k == a or k.startswith(a + ".") for a in allowed)]
        if changed:
            raise ConfigError(f"{run_dir} is an existing run; only {sorted(allowed)} may change when resuming, not "
                              f"{changed}")
    cfg = apply_overrides(cfg, overrides)
    if hasattr(module, "validate"):  # checks that need the whole config, before anything is written
        try:
            module.validate(cfg)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if run_dir is None:
        base = os.path.basename(name)[:-3] if name.endswith(".py") else name
        run_dir = os.path.join("runs", f"{base}-{time.strftime('%Y%m%d-%H%M%S')}")
    return module, cfg, run_dir, resuming


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help=f"one of: {', '.join(available_configs())}, or a .py file")
    parser.add_argument("overrides", nargs="*", help="key=value")
    parser.add_argument("--run-dir", default=None)
    args = parser.parse_args(argv)
    try:
        module, cfg, run_dir, resuming = resolve(args.config, args.overrides, args.run_dir)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from jax_irl import parallel

    # Multi-host: the config's `distributed` fields, else JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
    # JAX_PROCESS_ID; a no-op for one process. It must run before any JAX computation.
    parallel.initialize_distributed(getattr(cfg, "distributed", parallel.DistributedConfig()))
    import jax

    if jax.process_count() > 1 and args.run_dir is None:
        print("error: a multi-host run needs --run-dir on storage that every host shares", file=sys.stderr)
        return 2
    os.makedirs(run_dir, exist_ok=True)
    resolved = dataclasses.asdict(cfg)
    if jax.process_index() == 0:
        with open(os.path.join(run_dir, "config.json"), "w") as f:
            json.dump(resolved, f, indent=2)
    print(f"{'resuming' if resuming else 'starting'} {args.config} in {run_dir}")
    print(json.dumps(resolved, indent=2))
    module.run(cfg, run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
