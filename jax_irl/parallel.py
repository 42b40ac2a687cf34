"""Meshes, logical-axis rules, shardings and multi-host start-up. JAX's own runtime is the distributed engine.

A mesh has the axes ('data', 'fsdp', 'tensor'); any of them may be 1. Model params carry logical names
(vocab, embed, heads, kv, mlp) in their ``out_sharding`` metadata; ``rules`` map each name to a mesh axis (or
None), so the same model runs data-parallel, FSDP or tensor-parallel by changing the mesh shape alone.
Batches are sharded over ('data', 'fsdp') on their leading axis and built from each process's local rows with
``jax.make_array_from_process_local_data``, so one code path serves one host or many.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical name -> mesh axis (or a tuple of axes, or None = replicated)
DEFAULT_RULES: Tuple[Tuple[str, Any], ...] = (
    ("batch", BATCH_AXES),
    ("length", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh shape; -1 on one axis takes all the devices the others leave."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def resolve(self, num_devices: int) -> Tuple[int, int, int]:
        shape = [self.data, self.fsdp, self.tensor]
        if sum(s == -1 for s in shape) > 1:
            raise ValueError(f"at most one mesh axis may be -1; got data={self.data}, fsdp={self.fsdp}, "
                             f"tensor={self.tensor}")
        if any(s == 0 or s < -1 for s in shape):
            raise ValueError(f"mesh axis sizes must be positive or -1; got {shape}")
        known = int(np.prod([s for s in shape if s != -1]))
        if -1 in shape:
            if num_devices % known:
                raise ValueError(f"{num_devices} devices cannot be split into a mesh with fsdp*tensor (or the fixed "
                                 f"axes) = {known}")
            shape[shape.index(-1)] = num_devices // known
        if int(np.prod(shape)) != num_devices:
            raise ValueError(f"mesh data={shape[0]} x fsdp={shape[1]} x tensor={shape[2]} = {int(np.prod(shape))} "
                             f"devices, but {num_devices} are available")
        return tuple(shape)


def make_mesh(config: MeshConfig = MeshConfig(), devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A mesh with axes ('data', 'fsdp', 'tensor') over all devices (of every process), or the given ones."""
    devices = list(jax.devices() if devices is None else devices)
    shape = config.resolve(len(devices))
    auto = (jax.sharding.AxisType.Auto,) * 3
    if devices == list(jax.devices()):
        return jax.make_mesh(shape, MESH_AXES, axis_types=auto)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=auto)


def logical_to_spec(names: Sequence[Optional[str]], rules=DEFAULT_RULES) -> P:
    """PartitionSpec for logical axis names; a mesh axis is used at most once (later uses are replicated)."""
    table = dict(rules)
    used = set()
    spec = []
    for name in names:
        axes = table.get(name) if name is not None else None
        if name is not None and name not in table:
            raise ValueError(f"logical axis {name!r} has no rule; rules cover {sorted(table)}")
        axes_t = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        axes_t = tuple(a for a in axes_t if a not in used)
        used.update(axes_t)
        spec.append(None if not axes_t else axes_t[0] if len(axes_t) == 1 else axes_t)
    return P(*spec)


def _axis_size(mesh: Mesh, entry) -> int:
    if entry is None:
        return 1
    axes = (entry,) if isinstance(entry, str) else entry
    return int(np.prod([mesh.shape[a] for a in axes]))


def check_divisible(name: str, shape: Sequence[int], spec: P, mesh: Mesh) -> None:
    for dim, (size, entry) in enumerate(zip(shape, tuple(spec) + (None,) * len(shape))):
        n = _axis_size(mesh, entry)
        if size % n:
            raise ValueError(f"{name}: dimension {dim} of shape {tuple(shape)} has size {size}, which does not divide "
                             f"over mesh axis {entry} of size {n}; change the mesh shape or the model size")


def param_shardings(model: nnx.Module, mesh: Mesh, rules=DEFAULT_RULES, filter=nnx.Param):
    """NamedShardings for the model's variables (an nnx.State of shardings), from their logical names.

    Variables without names are replicated. Raises if a dimension does not divide over its mesh axes, naming
    the variable."""
    return state_shardings(nnx.state(model, filter), mesh, rules)


def state_shardings(state, mesh: Mesh, rules=DEFAULT_RULES):
    """NamedShardings for an nnx.State's variables from their logical names (``param_shardings`` of a state);
    variables without names are replicated."""

    def one(path, var):
        names = var.get_metadata().get("out_sharding")
        value = var.get_value()
        spec = logical_to_spec(names, rules) if names else P()
        name = ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        check_divisible(name, value.shape, spec, mesh)
        return var.replace(NamedSharding(mesh, spec))

    return jax.tree.map_with_path(lambda p, v: one(p, v), state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model(model: nnx.Module, mesh: Mesh, rules=DEFAULT_RULES) -> nnx.Module:
    """Place the model's params on the mesh (in place) and return it."""
    shardings = param_shardings(model, mesh, rules)
    state = nnx.state(model, nnx.Param)
    placed = jax.tree.map(lambda v, s: jax.device_put(v, s), state, shardings)
    nnx.update(model, placed)
    return model


def mesh_of(tree) -> Optional[Mesh]:
    """The mesh of the first array in ``tree`` placed with a NamedSharding over more than one device, or None."""
    for leaf in jax.tree.leaves(tree):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding) and sharding.mesh.size > 1:
            return sharding.mesh
    return None


def mesh_context(tree):
    """``jax.set_mesh`` over the mesh the arrays of ``tree`` (a model's state) live on, or a no-op context: a
    compiled function traced inside it keeps the model's activations split by rows (``losses.constrain_rows``),
    as the Trainer's step does."""
    mesh = mesh_of(tree)
    return contextlib.nullcontext() if mesh is None else jax.set_mesh(mesh)


def replicate_under_mesh(tree):
    """Inside a function traced under a mesh (``mesh_context``), ``tree``'s arrays constrained to be replicated,
    so that every process can read the (small) results of a scorer or the sampler; elsewhere ``tree`` as it is."""
    if jax.sharding.get_abstract_mesh().empty:
        return tree
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, P()), tree)


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Leading (batch) axis over ('data', 'fsdp'), the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def global_batch(local: Dict[str, np.ndarray], mesh: Mesh) -> Dict[str, jax.Array]:
    """A global batch from this process's rows: each process passes its own [B_local, ...] arrays.

    The global batch size (B_local * process count) must divide over data * fsdp."""
    n = _axis_size(mesh, BATCH_AXES)
    out = {}
    for key, value in local.items():
        value = np.asarray(value)
        if value.ndim == 0:
            raise ValueError(f"batch field {key!r} is a scalar; every field needs a leading batch axis")
        global_rows = value.shape[0] * jax.process_count()
        if global_rows % n:
            raise ValueError(f"batch field {key!r}: global batch size {global_rows} does not divide over the "
                             f"mesh's data * fsdp = {n} devices")
        sharding = batch_sharding(mesh, value.ndim)
        out[key] = jax.make_array_from_process_local_data(sharding, value)
    return out


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """Multi-host start-up; fields left None come from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and
    JAX_PROCESS_ID, or from JAX's own cluster detection (SLURM, TPU pods) when those are unset too."""

    coordinator_address: Optional[str] = None
    num_processes: Optional[int] = None
    process_id: Optional[int] = None


def initialize_distributed(config: DistributedConfig = DistributedConfig()) -> bool:
    """Start jax.distributed when the config or the environment names more than one process. Returns whether it
    started. Call before any other JAX call in each process."""
    address = config.coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
    num = config.num_processes if config.num_processes is not None else os.environ.get("JAX_NUM_PROCESSES")
    pid = config.process_id if config.process_id is not None else os.environ.get("JAX_PROCESS_ID")
    if address is None and num is None and pid is None:
        return False
    if address is None or num is None or pid is None:
        raise ValueError("multi-host start needs all of coordinator_address, num_processes and process_id (or "
                         "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID); got "
                         f"{address!r}, {num!r}, {pid!r}")
    num, pid = int(num), int(pid)
    if not 0 <= pid < num:
        raise ValueError(f"process_id must be in [0, {num}); got {pid}")
    # Cross-process collectives on the CPU backend go through gloo (GPU and TPU use their own).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=address, num_processes=num, process_id=pid)
    return True


COMPILATION_CACHE_ENV = "JAX_IRL_COMPILATION_CACHE"


def enable_compilation_cache(default_dir: str) -> Optional[str]:
    """Turn on JAX's persistent compilation cache so that a step compiled once is loaded, not recompiled, by every
    later jit of the same program: the stages of a sweep (each of which builds its own Trainer, hence its own
    jit) and a resumed run. Returns the cache folder in use, or None when off.

    The folder: ``$JAX_IRL_COMPILATION_CACHE`` ('off' turns the cache off), else ``default_dir`` (the driver passes
    ``<run dir>/xla_cache``). Entries go into a subfolder named after this host and process, since a cached
    executable is compiled for one machine's CPU features, a run folder may be shared by several hosts, and JAX
    writes entries without a lock (two processes must not write one folder). A cache folder the
    user set through JAX's own ``jax_compilation_cache_dir`` is left as it is. An executable loaded from the cache
    is the one XLA compiled for the same program, so results do not change (the driver's resume tests run with
    it on)."""
    import platform

    setting = os.environ.get(COMPILATION_CACHE_ENV, "").strip()
    if setting.lower() == "off":
        return None
    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    folder = os.path.join(os.path.abspath(setting or default_dir), f"{platform.node() or 'host'}-p{jax.process_index()}")
    os.makedirs(folder, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # CPU steps compile in ~1 s: keep all
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    # JAX decides once per process whether the cache is used, at the first compilation; start it over so that a
    # process that has already compiled something (a notebook, a test worker) uses the folder too.
    from jax.experimental.compilation_cache import compilation_cache

    compilation_cache.reset_cache()
    return folder
