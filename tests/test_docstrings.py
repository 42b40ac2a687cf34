"""Every public function of jax_irl.losses, sampling, rollout, train, symbolic and algorithms.* documents itself in
one layout, and its examples run.

The layout is optax's: a summary line, the math, ``Args:`` naming every parameter of the signature (with shapes),
``Returns:``, ``Examples:`` run here as doctests, and ``References:`` where a paper defines the quantity.
"""

import doctest
import importlib
import inspect
import re

import pytest

from tests.public_api import public_names

ALGORITHMS = [f"jax_irl.algorithms.{m}" for m in ("sft", "iqlearn", "gail", "pairs", "gshf", "ppo", "grpo",
                                                  "reward_models")]
# The modules whose examples run as doctests.
MODULES = [f"jax_irl.losses.{m}" for m in ("soft_q", "imitation", "preference", "ensemble", "policy_gradient",
                                           "group", "_common")] + ["jax_irl.sampling", "jax_irl.rollout",
                                                                   "jax_irl.train", "jax_irl.symbolic"] + ALGORITHMS
# The public functions held to the layout: every function among these modules' public names (tests/public_api.py).
OWNERS = ["jax_irl.losses", "jax_irl.sampling", "jax_irl.rollout", "jax_irl.train", "jax_irl.symbolic"] + ALGORITHMS


def _resolve(full):
    module, name = full.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


FUNCTIONS = sorted(full[len("jax_irl."):] for owner in OWNERS for full in public_names(owner)
                   if inspect.isfunction(_resolve(full)))


def _sections(doc):
    """{section name: its text} for the Google-style sections of a docstring."""
    parts = re.split(r"^(Args|Returns|Examples|References):[ \t]*$", doc, flags=re.M)
    return {name: text for name, text in zip(parts[1::2], parts[2::2])}


def test_every_public_function_is_checked():
    assert len(FUNCTIONS) >= 120 and {"losses.dpo_loss", "sampling.generate", "rollout.score_rows", "train.fit",
                                      "symbolic.token_rewards", "algorithms.grpo.train_grpo",
                                      "algorithms.reward_models.bon_gold"} <= set(FUNCTIONS)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_docstring_layout(name):
    fn = _resolve(f"jax_irl.{name}")
    doc = inspect.getdoc(fn)
    assert doc and doc.split("\n")[0].strip(), f"{name} has no summary line"
    sections = _sections(doc)
    for section in ("Args", "Returns", "Examples"):
        assert section in sections, f"{name}'s docstring has no '{section}:' section"
    documented = set(re.findall(r"^    (\w+):", sections["Args"], flags=re.M))
    params = [p for p in inspect.signature(fn).parameters]
    missing = [p for p in params if p not in documented]
    assert not missing, f"{name}'s Args do not document {missing}"
    extra = documented - set(params)
    assert not extra, f"{name}'s Args document {sorted(extra)}, which are not parameters"
    assert ">>> " in sections["Examples"], f"{name}'s Examples hold no doctest"


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples_run(module):
    mod = importlib.import_module(module)
    failed, attempted = doctest.testmod(mod, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert attempted >= 3 and failed == 0
