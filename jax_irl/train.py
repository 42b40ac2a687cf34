"""The thin trainer: one pure, jit-compiled step from any loss function, with explicit shardings.

    loss_fn(model, batch, rng) -> (loss, aux)      # aux: a dict of arrays; scalars are logged

``Trainer`` splits an NNX model into (graphdef, params, rest); the train step is the pure function
``(TrainState, batch) -> (TrainState, metrics)`` that merges the model inside, differentiates the loss with
respect to the params, and applies an optax update. It is jit-compiled with the params' NamedShardings (from
their logical names, see ``parallel``), the optimizer state's, and the batch's, and the state is donated.

Gradient accumulation splits the batch's leading axis into ``grad_accum_steps`` micro-batches inside a
``lax.scan`` and averages their gradients; for token-mean losses pass ``normalizer`` (the global token count)
from ``batch`` to make the result exactly the full-batch gradient.

``fit`` is the loop (batches, steps, checkpoints on schedule and on SIGTERM, the NaN stop, progress);
its records go to a ``tracking`` tracker (metrics.jsonl + TensorBoard by default) and its ``Every`` hooks
run evaluations on a schedule. One resumable stage of an experiment (Trainer + Checkpointer +
resume + fit) is ``stages.run_stage``, which sits on this module.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jax_irl import parallel, tracking
from jax_irl.data import batching
from jax_irl.checkpoint import PreemptionFlag, abstract_like
from jax_irl.models import lora


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    name: str = "adamw"  # adamw | adam | sgd
    learning_rate: float = 1e-4
    schedule: str = "constant"  # constant | cosine | linear (decay to 0 at the stage's last step, after warmup)
    warmup_steps: int = 0
    # The schedule's length. None (the default): the stage's step count, so the decay always ends at the last
    # step. Set, it must equal the stage's steps (a mismatch is refused: optax would clamp at total_steps and
    # train every later step at learning rate 0).
    total_steps: Optional[int] = None
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: Optional[float] = 1.0
    grad_accum_steps: int = 1

    def __post_init__(self):
        if self.name not in ("adamw", "adam", "sgd"):
            raise ValueError(f"optimizer name must be 'adamw', 'adam' or 'sgd'; got {self.name!r}")
        if self.schedule not in ("constant", "cosine", "linear"):
            raise ValueError(f"schedule must be 'constant', 'cosine' or 'linear'; got {self.schedule!r}")
        if self.grad_accum_steps < 1:
            raise ValueError(f"grad_accum_steps must be >= 1; got {self.grad_accum_steps}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate >= 0):
            raise ValueError(f"learning_rate must be a finite number >= 0; got {self.learning_rate}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0; got {self.warmup_steps}")
        if self.total_steps is not None and self.total_steps < 1:
            raise ValueError(f"total_steps must be None (the stage's steps) or >= 1; got {self.total_steps}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0; got {self.weight_decay}")
        for name in ("b1", "b2"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 <= value < 1):
                raise ValueError(f"{name} must be in [0, 1) (an Adam moment's decay); got {value}")
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise ValueError(f"eps must be a finite number > 0 (it keeps Adam's update finite); got {self.eps}")
        if self.max_grad_norm is not None and not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ValueError(f"max_grad_norm must be None (no clipping) or a finite number > 0; got "
                             f"{self.max_grad_norm}")


def schedule_length(cfg: OptimizerConfig, steps: Optional[int]) -> Optional[int]:
    r"""The number of steps a stage's learning-rate schedule spans.

    Args:
        cfg: the ``OptimizerConfig``.
        steps: the stage's steps, or None (a constant schedule built without a length).

    Returns:
        ``cfg.total_steps`` when set (it must equal ``steps``), else ``steps``.

    Raises:
        ValueError: when ``total_steps`` differs from the stage's steps (optax would hold the final learning rate
            after it), or the warmup is longer than the schedule.

    Examples:
        >>> from jax_irl import train
        >>> train.schedule_length(train.OptimizerConfig(schedule="cosine", warmup_steps=10), 100)
        100
    """
    if cfg.total_steps is not None and steps is not None and cfg.total_steps != steps:
        raise ValueError(f"optimizer.total_steps={cfg.total_steps} but the stage trains {steps} steps: the "
                         f"{cfg.schedule} schedule would end elsewhere than the last step (after total_steps optax "
                         f"holds the final learning rate, 0 for a decay). Leave total_steps unset (None) so that "
                         f"the schedule follows the stage's steps")
    length = cfg.total_steps if cfg.total_steps is not None else steps
    if length is not None and cfg.warmup_steps > length:
        raise ValueError(f"optimizer.warmup_steps={cfg.warmup_steps} is longer than the stage's {length} steps")
    return length


def learning_rate_schedule(cfg: OptimizerConfig, total_steps: Optional[int] = None) -> optax.Schedule:
    r"""The learning rate as a function of the step: linear warmup, then constant, cosine or linear decay.

    The decay reaches 0 at the schedule's last step (``schedule_length``), so the last step of a stage trains at
    the schedule's end, never past it.

    Args:
        cfg: the ``OptimizerConfig`` (learning_rate, schedule, warmup_steps).
        total_steps: the stage's steps; required by 'cosine' and 'linear'.

    Returns:
        An ``optax.Schedule``.

    Examples:
        >>> from jax_irl import train
        >>> lr = train.learning_rate_schedule(train.OptimizerConfig(learning_rate=1.0, schedule="linear",
        ...                                                         warmup_steps=2), total_steps=6)
        >>> [round(float(lr(s)), 2) for s in range(7)]
        [0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0]
    """
    length = schedule_length(cfg, total_steps)
    if cfg.schedule != "constant" and length is None:
        raise ValueError(f"a {cfg.schedule} schedule needs the stage's step count: pass total_steps")
    decay_steps = max((length or 0) - cfg.warmup_steps, 1)
    if cfg.schedule == "constant":
        main = optax.constant_schedule(cfg.learning_rate)
    elif cfg.schedule == "cosine":
        main = optax.cosine_decay_schedule(cfg.learning_rate, decay_steps)
    else:
        main = optax.linear_schedule(cfg.learning_rate, 0.0, decay_steps)
    if cfg.warmup_steps:
        warm = optax.linear_schedule(0.0, cfg.learning_rate, cfg.warmup_steps)
        return optax.join_schedules([warm, main], [cfg.warmup_steps])
    return main


def make_optimizer(cfg: OptimizerConfig, total_steps: Optional[int] = None) -> optax.GradientTransformation:
    r"""The optax transformation of an ``OptimizerConfig``: gradient clipping by global norm, then AdamW, Adam or SGD
    on ``learning_rate_schedule``.

    Args:
        cfg: the ``OptimizerConfig``.
        total_steps: the stage's steps (for a decaying schedule).

    Returns:
        An ``optax.GradientTransformation``.

    Examples:
        >>> import jax.numpy as jnp
        >>> from jax_irl import train
        >>> tx = train.make_optimizer(train.OptimizerConfig(name="sgd", learning_rate=0.1, max_grad_norm=1.0))
        >>> updates, _ = tx.update({"w": jnp.array([30.0, 40.0])}, tx.init({"w": jnp.zeros(2)}))
        >>> updates["w"]  # clipped to norm 1, then -0.1 times it
        Array([-0.06, -0.08], dtype=float32)
    """
    lr = learning_rate_schedule(cfg, total_steps)
    if cfg.name == "adamw":
        opt = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
    elif cfg.name == "adam":
        opt = optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    else:
        opt = optax.sgd(lr)
    parts = [optax.clip_by_global_norm(cfg.max_grad_norm)] if cfg.max_grad_norm else []
    return optax.chain(*parts, opt)


def optimizer_shardings(tx: optax.GradientTransformation, params, param_shardings, mesh: Mesh):
    r"""Shardings for ``tx.init(params)``'s state, laid out like the params.

    Every subtree shaped like the params (Adam's moments, ...) takes the params' shardings; any other leaf whose
    shape belongs to params of a single sharding takes that sharding; the rest (counts, scalars) is replicated. So
    the optimizer state is sharded like the params by construction, whatever layout XLA would give ``tx.init``'s
    zeros.

    Args:
        tx: the optax transformation.
        params: the trained params (arrays or ``jax.ShapeDtypeStruct``s).
        param_shardings: their ``NamedSharding``s, the same tree.
        mesh: the mesh.

    Returns:
        A tree of ``NamedSharding``s shaped like ``tx.init(params)``.

    Examples:
        >>> import jax, jax.numpy as jnp, optax
        >>> from jax.sharding import NamedSharding, PartitionSpec as P
        >>> from jax_irl import parallel, train
        >>> mesh = parallel.make_mesh(parallel.MeshConfig(data=1, fsdp=2), jax.devices()[:2])
        >>> params = {"w": jnp.zeros((4, 2))}
        >>> sh = train.optimizer_shardings(optax.adam(1e-3), params, {"w": NamedSharding(mesh, P("fsdp"))}, mesh)
        >>> sh[0].mu["w"].spec, sh[0].count.spec
        (P('fsdp',), P())
    """
    abstract = jax.eval_shape(tx.init, params)
    params_def = jax.tree.structure(params)
    replicated = NamedSharding(mesh, P())
    by_shape: Dict[Tuple[int, ...], set] = {}
    for p, s in zip(jax.tree.leaves(params), jax.tree.leaves(param_shardings)):
        by_shape.setdefault(tuple(p.shape), set()).add(s)

    def like_params(x):
        return jax.tree.structure(x) == params_def

    def one(sub):
        if like_params(sub):
            return param_shardings
        return jax.tree.map(lambda leaf: next(iter(by_shape[tuple(leaf.shape)]))
                            if len(by_shape.get(tuple(leaf.shape), ())) == 1 and leaf.ndim else replicated, sub)

    return jax.tree.map(one, abstract, is_leaf=like_params)


class TrainState(NamedTuple):
    step: jax.Array  # int32 []
    params: Any  # nnx.State of the model's Params
    opt_state: Any
    rng: jax.Array  # PRNG key for the loss function (dropout, policy samples)


def _split_micro(batch, k: int):
    def split(x):
        if x.shape[0] % k:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by grad_accum_steps={k}")
        return x.reshape((k, x.shape[0] // k) + x.shape[1:])

    return jax.tree.map(split, batch)


def make_train_step(graphdef, loss_fn: Callable, tx: optax.GradientTransformation, grad_accum_steps: int = 1,
                    schedule: Optional[optax.Schedule] = None):
    r"""The pure train step ``(state, batch, rest) -> (state, metrics)`` for any loss function.

    The step merges the graph with the trained params and ``rest`` (the model's state outside them: a LoRA model's
    frozen base, non-Param variables, passed as an argument rather than folded into the executable as a constant),
    differentiates ``loss_fn``, accumulates gradients over micro-batches, and applies ``tx``. ``Trainer`` compiles it
    with shardings and donated state.

    Args:
        graphdef: the model's ``nnx.GraphDef``.
        loss_fn: ``loss_fn(model, batch, rng) -> (loss, aux)``; aux's scalars become metrics.
        tx: the optax transformation.
        grad_accum_steps: micro-batches per step (the batch's rows must divide by it).
        schedule: the learning-rate schedule, logged as ``lr``.

    Returns:
        The step function.

    Examples:
        >>> import jax
        >>> import numpy as np
        >>> from flax import nnx
        >>> from jax_irl import losses, parallel, train
        >>> from jax_irl.models import presets
        >>> from jax_irl.models.transformer import Transformer
        >>> cfg = presets.preset("tiny")  # a 2-layer Llama, 64 wide
        >>> def loss_fn(model, batch, rng):
        ...     logits = model(batch["tokens"][:, :-1]).logits
        ...     return losses.mle_loss(logits, batch["tokens"][:, 1:], np.ones((4, 7), np.float32))
        >>> mesh = parallel.make_mesh(parallel.MeshConfig(), jax.devices()[:1])
        >>> from jax_irl import train
        >>> graphdef, params, rest = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param, ...)
        >>> step = train.make_train_step(graphdef, loss_fn, train.make_optimizer(train.OptimizerConfig()))
        >>> callable(step)
        True
    """

    def loss_of_params(params, batch, rng, rest):
        model = nnx.merge(graphdef, params, rest)
        lora.set_dropout_key(model, jax.random.fold_in(rng, 0x10AA))  # a no-op without adapters with dropout
        loss, aux = loss_fn(model, batch, rng)
        scalars = {k: v for k, v in aux.items() if jnp.ndim(v) == 0}
        return loss, scalars

    grad_fn = jax.value_and_grad(loss_of_params, has_aux=True)

    def step(state: TrainState, batch, rest):
        rng, step_rng = jax.random.split(state.rng)
        if grad_accum_steps == 1:
            (loss, aux), grads = grad_fn(state.params, batch, step_rng, rest)
        else:
            micro = _split_micro(batch, grad_accum_steps)
            keys = jax.random.split(step_rng, grad_accum_steps)

            def body(carry, xs):
                g_acc, l_acc, a_acc = carry
                (l, a), g = grad_fn(state.params, xs[0], xs[1], rest)
                return (jax.tree.map(jnp.add, g_acc, g), l_acc + l, jax.tree.map(jnp.add, a_acc, a)), None

            zeros = jax.tree.map(jnp.zeros_like, state.params)
            aux_shape = jax.eval_shape(lambda: grad_fn(state.params, jax.tree.map(lambda x: x[0], micro),
                                                       keys[0], rest)[0][1])
            aux0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), aux_shape)
            (grads, loss, aux), _ = jax.lax.scan(body, (zeros, jnp.zeros(()), aux0), (micro, keys))
            scale = 1.0 / grad_accum_steps
            grads = jax.tree.map(lambda g: g * scale, grads)
            loss = loss * scale
            aux = jax.tree.map(lambda a: a * scale, aux)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = dict(aux, loss=loss, grad_norm=optax.tree.norm(grads))
        if schedule is not None:
            metrics["learning_rate"] = schedule(state.step)
        return TrainState(state.step + 1, params, opt_state, rng), metrics

    return step


class Trainer:
    """Holds the model's graph, the optimizer and the compiled step on a mesh.

    trainer = Trainer(model, loss_fn, OptimizerConfig(...), mesh, total_steps=steps)
    state = trainer.init_state(seed)
    state, metrics = trainer.step(state, parallel.global_batch(local_batch, mesh))
    """

    def __init__(self, model: nnx.Module, loss_fn: Callable, opt: OptimizerConfig, mesh: Mesh,
                 rules=parallel.DEFAULT_RULES, *, total_steps: Optional[int] = None,
                 tx: Optional[optax.GradientTransformation] = None):
        self.mesh, self.opt_config = mesh, opt
        # The steps the learning-rate schedule spans (None: a constant schedule built without a length).
        self.schedule_steps = schedule_length(opt, total_steps)
        # What is trained: every Param, or for a model with LoRA adapters the adapters and the params outside
        # the adapted decoders (heads); the rest (a frozen base) is passed to the step unchanged, sharded by
        # its own logical names, and never copied.
        trainable = lora.trainable(model)
        self.param_shardings = parallel.param_shardings(model, mesh, rules, filter=trainable)
        self.graphdef, params, rest = nnx.split(model, trainable, ...)
        self.rest_shardings = parallel.state_shardings(rest, mesh, rules)
        self.rest = jax.device_put(rest, self.rest_shardings)
        # The trainer owns its arrays: steps donate the state, which must never delete the caller's model.
        # (device_put may alias a replicated shard to the source buffer, so copy inside jit instead.)
        self._params = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=self.param_shardings)(params)
        # ``tx`` replaces the optimizer built from ``opt`` (e.g. an ensemble's per-member clipping); the logged
        # learning rate still follows ``opt``'s schedule.
        self.tx = tx if tx is not None else make_optimizer(opt, self.schedule_steps)
        self.schedule = learning_rate_schedule(opt, self.schedule_steps)
        self._step_fn = make_train_step(self.graphdef, loss_fn, self.tx, opt.grad_accum_steps, self.schedule)
        self._compiled = None
        self.state_shardings = None

    def init_state(self, seed: int) -> TrainState:
        replicated = NamedSharding(self.mesh, P())
        # Every leaf of the optimizer state gets a NamedSharding (needed for multi-process runs and Orbax): the
        # moments are laid out like the params (FSDP shards them too), counts are replicated.
        opt_sh = optimizer_shardings(self.tx, self._params, self.param_shardings, self.mesh)
        opt_state = jax.jit(self.tx.init, out_shardings=opt_sh)(self._params)
        state = TrainState(jax.device_put(jnp.zeros((), jnp.int32), replicated), self._params, opt_state,
                           jax.device_put(jax.random.PRNGKey(seed), replicated))
        self.state_shardings = jax.tree.map(lambda x: x.sharding, state)
        return state

    def model(self, state: TrainState) -> nnx.Module:
        """The model with the state's params (for evaluation and sampling)."""
        return nnx.merge(self.graphdef, state.params, self.rest)

    def step(self, state: TrainState, batch: Dict[str, jax.Array]):
        if self.state_shardings is None:
            raise RuntimeError("call init_state (or restore a state) before step")
        if self._compiled is None:
            batch_sh = jax.tree.map(lambda x: x.sharding, batch)
            self._compiled = jax.jit(self._step_fn, in_shardings=(self.state_shardings, batch_sh,
                                                                  self.rest_shardings),
                                     out_shardings=(self.state_shardings, NamedSharding(self.mesh, P())),
                                     donate_argnums=0)
        with jax.set_mesh(self.mesh):  # traced under the mesh: the model keeps its activations split by rows
            return self._compiled(state, batch, self.rest)


class Every(NamedTuple):
    """A hook of ``fit``: ``fn(model, step)`` after every ``steps``-th step (step counted from 1), returning a dict
    of floats to log with the step's record under ``prefix`` (or None to log nothing): evaluations, samples,
    custom metrics.

        fit(trainer, state, batch_fn, steps=1000, hooks=[Every(100, lambda model, step: {"accuracy": ...})])
    """

    steps: int
    fn: Callable[[nnx.Module, int], Optional[Dict[str, float]]]
    prefix: str = "eval/"

    def check(self) -> None:
        if not (isinstance(self.steps, (int, np.integer)) and self.steps >= 1):
            raise ValueError(f"a hook's steps must be an int >= 1; got {self.steps!r}")
        if not callable(self.fn):
            raise ValueError(f"a hook's fn must be callable fn(model, step); got {self.fn!r}")


class ModelBatches:
    """A batch function whose batches depend on the current model: ``fit`` calls it as fn(position, model)
    (online methods: the policy's own samples, drawn with a key derived from the position)."""

    def __init__(self, fn: Callable[[int, nnx.Module], Dict[str, Any]]):
        if not callable(fn):
            raise ValueError(f"ModelBatches needs a callable fn(position, model); got {fn!r}")
        self.fn = fn

    def __call__(self, position: int, model) -> Dict[str, Any]:
        return self.fn(position, model)


def resume_or_init(trainer: Trainer, checkpointer, seed: int):
    r"""The state to train from: the latest complete checkpoint's, restored onto this trainer's mesh, or a fresh one.

    Args:
        trainer: the ``Trainer``.
        checkpointer: a ``checkpoint.Checkpointer``, or None.
        seed: the seed of a fresh state.

    Returns:
        ``(state, start_position)``: the position is the checkpoint's data position (0 for a fresh state).

    Examples:
        >>> import jax
        >>> import numpy as np
        >>> from flax import nnx
        >>> from jax_irl import losses, parallel, train
        >>> from jax_irl.models import presets
        >>> from jax_irl.models.transformer import Transformer
        >>> cfg = presets.preset("tiny")  # a 2-layer Llama, 64 wide
        >>> def loss_fn(model, batch, rng):
        ...     logits = model(batch["tokens"][:, :-1]).logits
        ...     return losses.mle_loss(logits, batch["tokens"][:, 1:], np.ones((4, 7), np.float32))
        >>> mesh = parallel.make_mesh(parallel.MeshConfig(), jax.devices()[:1])
        >>> trainer = train.Trainer(Transformer(cfg, rngs=nnx.Rngs(0)), loss_fn, train.OptimizerConfig(), mesh)
        >>> state, position = train.resume_or_init(trainer, None, seed=0)
        >>> int(state.step), position
        (0, 0)
    """
    state = trainer.init_state(seed)
    if checkpointer is None or checkpointer.latest_step() is None:
        return state, 0
    restored, position, _ = checkpointer.restore(abstract_like(state))
    return restored, position


def fit(trainer: Trainer, state: TrainState, batch_fn: Callable[..., Dict[str, Any]], *, steps: int,
        start_position: int = 0, checkpointer=None, log_dir: Optional[str] = None,
        tracker: Optional[tracking.Tracker] = None, hooks: Sequence[Every] = (), progress: bool = True,
        tokens_key: Optional[str] = "mask", desc: str = "train", prefetch: int = 2):
    r"""Train until ``state.step == steps``: the loop, with checkpoints, hooks, trackers and a progress bar.

    ``batch_fn(position)`` returns this process's local batch (a dict of numpy arrays) for a data position; a
    resumed run continues from the checkpoint's position. A ``batching.Batches`` is read through its Grain iterator,
    which builds the next ``prefetch`` batches on a host thread while the device computes; the iterator's state is
    saved with each checkpoint and checked against the checkpoint's data position on resume. A ``ModelBatches`` is
    called as ``batch_fn(position, model)`` at its step, for batches holding the policy's own samples. Saves on the
    checkpointer's schedule, on SIGTERM (then returns 'preempted') and at the end. A non-finite loss stops the run
    with ``FloatingPointError`` before anything is saved from it.

    Args:
        trainer: the ``Trainer``; its schedule must span ``steps``.
        state: the ``TrainState`` to start from (``resume_or_init``).
        batch_fn: the batches, as above.
        steps: the step to train to.
        start_position: the data position of the first batch.
        checkpointer: an optional ``checkpoint.Checkpointer``.
        log_dir: with no ``tracker``, metrics go to ``tracking.open_tracker(log_dir)`` (metrics.jsonl plus the
            selected trackers).
        tracker: a tracker (``log(step, record)``, ``close()``); not closed here.
        hooks: ``Every(steps, fn)`` hooks, run after their steps; what they return is logged under their prefix.
        progress: show a progress bar (redrawn at most every 30 s when stderr is not a terminal).
        tokens_key: the batch key whose sum counts tokens for tokens/s (None: not logged).
        desc: the progress bar's label.
        prefetch: batches a ``batching.Batches`` builds ahead (0: each when it is needed).

    Returns:
        ``(state, status)``, status 'done' or 'preempted'.

    Examples:
        >>> import jax
        >>> import numpy as np
        >>> from flax import nnx
        >>> from jax_irl import losses, parallel, train
        >>> from jax_irl.models import presets
        >>> from jax_irl.models.transformer import Transformer
        >>> cfg = presets.preset("tiny")  # a 2-layer Llama, 64 wide
        >>> def loss_fn(model, batch, rng):
        ...     logits = model(batch["tokens"][:, :-1]).logits
        ...     return losses.mle_loss(logits, batch["tokens"][:, 1:], np.ones((4, 7), np.float32))
        >>> mesh = parallel.make_mesh(parallel.MeshConfig(), jax.devices()[:1])
        >>> trainer = train.Trainer(Transformer(cfg, rngs=nnx.Rngs(0)), loss_fn, train.OptimizerConfig(), mesh)
        >>> batch_fn = lambda position: {"tokens": np.random.default_rng(position).integers(0, 32, (4, 8))}
        >>> state, status = train.fit(trainer, trainer.init_state(0), batch_fn, steps=3, progress=False)
        >>> int(state.step), status
        (3, 'done')
    """
    if trainer.schedule_steps is not None and trainer.opt_config.schedule != "constant" \
            and trainer.schedule_steps != steps:
        raise ValueError(f"the trainer's {trainer.opt_config.schedule} schedule spans {trainer.schedule_steps} "
                         f"steps but fit trains to step {steps}: build the Trainer with total_steps={steps}")
    hooks = tuple(hooks)
    for hook in hooks:
        if not isinstance(hook, Every):
            raise ValueError(f"hooks must be train.Every(steps, fn); got {hook!r}")
        hook.check()
    first = int(state.step)
    owned = tracker is None and bool(log_dir)
    writer = tracking.open_tracker(log_dir, first) if owned else tracker
    position = start_position
    if not (isinstance(prefetch, (int, np.integer)) and prefetch >= 0):
        raise ValueError(f"prefetch must be an int >= 0; got {prefetch!r}")
    iterator = batch_fn.iterator(position, prefetch) if isinstance(batch_fn, batching.Batches) and prefetch else None
    if iterator is not None and checkpointer is not None and checkpointer.latest_step() == first \
            and checkpointer.has_data(first):
        saved = checkpointer.restore_data(first, iterator).get_state()
        if saved.get("next_index") != position:
            raise ValueError(f"checkpoint {checkpointer.directory} step {first}: its data iterator is at position "
                             f"{saved.get('next_index')} but its record says {position}; the checkpoint is damaged")
    interactive = sys.stderr.isatty()
    bar = tqdm.tqdm(total=steps, initial=first, disable=not progress, desc=desc, dynamic_ncols=interactive,
                    mininterval=0.1 if interactive else 30.0)
    status = "done"
    saved_step = first if checkpointer is not None and checkpointer.latest_step() == first else None
    try:
        with PreemptionFlag() as preempt:
            for step in range(first, steps):
                if iterator is not None:
                    local = next(iterator)
                elif isinstance(batch_fn, ModelBatches):
                    local = batch_fn(position, trainer.model(state))
                else:
                    local = batch_fn(position)
                batch = parallel.global_batch(local, trainer.mesh)
                start = time.perf_counter()
                state, metrics = trainer.step(state, batch)
                record = {k: float(v) for k, v in jax.device_get(metrics).items()}
                elapsed = time.perf_counter() - start
                if not math.isfinite(record["loss"]):
                    raise FloatingPointError(f"loss is {record['loss']} at step {step + 1}; stopping before saving it "
                                             f"(the last checkpoint is intact)")
                position += 1
                if tokens_key and tokens_key in local:
                    tokens = float(np.sum(np.asarray(local[tokens_key]) != 0)) * jax.process_count()
                    record["tokens_per_s"] = tokens / max(elapsed, 1e-9)
                for hook in hooks:
                    if (step + 1) % hook.steps == 0:
                        out = hook.fn(trainer.model(state), step + 1)
                        record.update({f"{hook.prefix}{k}": float(v) for k, v in (out or {}).items()})
                if writer is not None:
                    writer.log(step + 1, record)
                bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False,
                                **({"tok/s": f"{record['tokens_per_s']:.0f}"} if "tokens_per_s" in record else {}))
                bar.update(1)  # redraws (with the postfix) on the bar's own schedule
                if checkpointer is not None and checkpointer.save(step + 1, state, data_position=position,
                                                                  force=preempt.requested, data_iterator=iterator):
                    saved_step = step + 1
                if preempt.requested:
                    status = "preempted"
                    break
    except BaseException:
        if iterator is not None:  # the prefetching thread stops with the loop
            iterator.close()
        raise
    bar.close()
    if owned:
        writer.close()
    if checkpointer is not None:
        if status == "done" and saved_step != int(state.step):
            checkpointer.save(int(state.step), state, data_position=position, force=True, data_iterator=iterator)
        checkpointer.wait()
    if iterator is not None:
        iterator.close()
    return state, status
