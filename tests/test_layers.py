"""The package's layering: no module imports upward, and no two modules import each other at import time.

Layers, lowest first (a module may import its own package and anything in a lower layer):

    losses, parallel, checkpoint, tracking, models.config, models.layers
    metrics, models
    data
    symbolic                      (checkers; may read data's puzzle tables)
    sampling
    rollout, train                (one forward door / the train step; neither imports the other)
    stages                        (resumable stages and cached results, on train)
    algorithms, sweep
    tasks, aot                    (a task = data + metric + tool)
    experiments.lm_base           (the set-up every LM experiment shares: task -> tokenizer -> run -> base -> pi0)
    experiments.recipes           (each paper's config dataclass, run, tables and plots)
    experiments.configs, .aot     (declarations over the recipes; the AOT catalogue of their steps)
    experiments                   (the driver; nothing in jax_irl imports it)
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

LAYERS = [
    ("jax_irl.losses", "jax_irl.parallel", "jax_irl.checkpoint", "jax_irl.tracking", "jax_irl.models.config",
     "jax_irl.models.layers"),
    ("jax_irl.metrics", "jax_irl.models"),
    ("jax_irl.data",),
    ("jax_irl.symbolic",),
    ("jax_irl.sampling",),
    ("jax_irl.rollout", "jax_irl.train"),
    ("jax_irl.stages",),
    ("jax_irl.algorithms", "jax_irl.sweep"),
    ("jax_irl.tasks", "jax_irl.aot"),
    ("experiments.lm_base",),
    ("experiments.recipes",),
    ("experiments.configs", "experiments.aot"),
    ("experiments",),
]


def _modules():
    out = {}
    for package in ("jax_irl", "experiments"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


MODULES = _modules()


def _imports(name, path, top_level_only):
    """The project modules ``name`` imports (``from a import b`` resolved to a.b when that is a module)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module
            for alias in node.names:
                candidate = f"{prefix}.{alias.name}"
                found.add(candidate if candidate in MODULES else prefix)
    return {m for m in found if m.split(".")[0] in ("jax_irl", "experiments") and m != name}


def _layer(module):
    best = None
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (rank, len(prefix), prefix)
    return best


def _package(module):
    return _layer(module)[2]


def test_every_module_has_a_layer():
    assert [m for m in MODULES if m not in ("jax_irl", "experiments") and _layer(m) is None] == []


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m not in ("jax_irl", "experiments")))
def test_no_module_imports_upward_or_sideways(name):
    rank, _, package = _layer(name)
    bad = []
    for dep in sorted(_imports(name, MODULES[name], top_level_only=False)):
        if dep in ("jax_irl", "experiments"):
            continue
        dep_rank, _, dep_package = _layer(dep)
        if dep_rank > rank or (dep_rank == rank and dep_package != package):
            bad.append(f"{dep} (layer {dep_rank}, {dep_package})")
    assert not bad, f"{name} (layer {rank}, {package}) imports {bad}"


def test_no_import_cycles_at_import_time():
    graph = {m: _imports(m, p, top_level_only=True) & set(MODULES) for m, p in MODULES.items()}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    # a package's __init__ re-exporting its submodules is not a cycle of code
    cycles = [c for c in cycles if not any(a == b.rsplit(".", 1)[0] for a, b in zip(c, c[1:]))]
    assert cycles == []


def test_the_checker_sees_a_known_upward_import(tmp_path):
    """The rule bites: an algorithms module importing tasks (a higher layer) is reported."""
    path = tmp_path / "fake.py"
    path.write_text("from jax_irl import tasks\nfrom jax_irl.data import batching\n")
    deps = _imports("jax_irl.algorithms.fake", path, top_level_only=False)
    assert deps == {"jax_irl.tasks", "jax_irl.data.batching"}
    assert _layer("jax_irl.tasks")[0] > _layer("jax_irl.algorithms.fake")[0]
    assert _layer("jax_irl.data.batching")[0] < _layer("jax_irl.algorithms.fake")[0]


def test_configs_declare_and_recipes_run():
    """No config module defines ``run`` (it takes its recipe's), and none grows into a recipe."""
    import re

    configs = sorted((ROOT / "experiments" / "configs").glob("[!_]*.py"))
    assert len(configs) >= 10, configs
    for path in configs:
        text = path.read_text()
        assert not re.search(r"^def run\b", text, re.M), path.name
        assert len(text.splitlines()) <= 90, (path.name, len(text.splitlines()))
