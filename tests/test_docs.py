"""The documentation site: it builds with ``mkdocs build --strict`` (offline), its API reference covers every public
name of the core modules, its code examples run, and the project narrates no development history."""

import contextlib
import io
import os
import pathlib
import pkgutil
import re
import subprocess
import sys

import pytest

from tests.public_api import public_names

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# The modules whose every public name (tests/public_api.py) must be in the reference.
CORE = ["jax_irl.losses", "jax_irl.sampling", "jax_irl.rollout", "jax_irl.train", "jax_irl.symbolic"]


def _core_modules():
    import jax_irl.algorithms as algorithms

    return CORE + [f"jax_irl.algorithms.{m.name}" for m in pkgutil.iter_modules(algorithms.__path__)]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return out


@pytest.mark.slow
def test_docs_build_strict_and_every_page_is_in_the_nav(site):
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in DOCS.rglob("*.md"):
        rel = page.relative_to(DOCS).as_posix()
        assert rel in nav, f"docs/{rel} is not in mkdocs.yml's nav"
        built = site / ("index.html" if rel == "index.md" else rel[:-3] + "/index.html")
        assert built.exists(), f"docs/{rel} was not built to {built}"


@pytest.mark.slow
def test_api_reference_covers_every_public_name(site):
    html = "".join(p.read_text() for p in (site / "api").rglob("*.html"))
    anchors = set(re.findall(r'id="([\w.]+)"', html))
    names = [n for m in _core_modules() for n in public_names(m)]
    assert len(names) > 150 and "jax_irl.losses.dpo_loss" in names
    missing = [n for n in names if n not in anchors]
    assert not missing, f"missing from the API reference (docs/api/): {missing}"


def test_method_pages_have_a_table_a_plot_and_a_reading():
    for page in ("iqlearn", "gshf", "ppo", "grpo", "rlsf", "ensembles"):
        text = (DOCS / "methods" / f"{page}.md").read_text()
        assert re.search(r"^\|.*\|\n\|[-| ]+\|$", text, re.M), f"{page}: no results table"
        plots = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text)
        assert plots, f"{page}: no plot"
        for plot in plots:
            assert (DOCS / "methods" / plot).resolve().exists(), f"{page}: {plot} does not exist"
        assert "What it shows" in text or "what it shows" in text.lower(), f"{page}: no reading of the results"
        assert re.search(r"20\d\d-\d\d-\d\d", text), f"{page}: its measurements are not dated"


def test_no_development_history_in_tracked_files():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not files:
        pytest.skip("not a git checkout")
    # Narration of how the project was built: a numbered work period ("s-ession 3") or a named issue ("the
    # p-erformance issue"), spelt here in pieces so that this file does not match itself.
    pattern = re.compile("|".join(("sess" + r"ion [0-9]", "the " + "perf" + "ormance issue")), re.I)
    hits = []
    for name in files:
        path = ROOT / name
        if path.suffix in (".png", ".json") or not path.is_file():
            continue
        for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if pattern.search(line):
                hits.append(f"{name}:{i}: {line.strip()[:80]}")
    assert not hits, "development history belongs in git, not in the project:\n" + "\n".join(hits)


def _block_after(page, marker):
    text = (DOCS / page).read_text()
    match = re.search(re.escape(marker) + r".*?```python\n(.*?)```", text, re.S)
    assert match, f"docs/{page} lost the code block after {marker!r}"
    return match.group(1)


def test_models_guide_example_runs_on_local_folders(tmp_path, tiny_hf_llama):
    """The models guide's code, with its placeholder paths pointed at real local folders."""
    llama, bert = tiny_hf_llama
    code = _block_after("guides/models.md", "# Models and checkpoints")
    code = code.replace("/path/to/local/llama", str(llama)).replace("/path/to/local/bert", bert)
    code = code.replace("/tmp/export", str(tmp_path / "export"))
    # The reward model reads prompt + response; here both models share MiniLM's vocabulary.
    code = code.replace("encoder = hf.encoder_from_pretrained", "import numpy as np\n"
                        "reward_tokens = np.concatenate([np.repeat(tokens, 4, 0), np.asarray(out.tokens)], 1)\n"
                        "reward_mask = np.concatenate([np.repeat(mask, 4, 0), np.asarray(out.mask)], 1)\n"
                        "encoder = hf.encoder_from_pretrained")
    scope = {}
    exec(compile(code, "models guide example", "exec"), scope)
    assert scope["out"].tokens.shape == (8, 64) and scope["rewards"].shape == (8, 4)
    assert scope["best"].shape == (2,) and scope["accept"].shape == (2, 4)
    assert (tmp_path / "export" / "model.safetensors").exists()


def test_symbolic_guide_custom_tool_is_a_working_tool():
    from jax_irl import symbolic

    code = _block_after("guides/symbolic.md", "Write your own tool as any object")
    scope = {}
    exec(compile(code, "symbolic guide tool example", "exec"), scope)
    tool = scope["NoDigits"]()
    cert = symbolic.safe_check(tool, "", "ab1c")
    assert not cert.correct and [(s.start, s.end) for s in cert.spans] == [(2, 3)]
    assert symbolic.token_rewards(cert, [(0, 2), (2, 3), (3, 4)]).tolist() == [1.0, 0.0, 0.0]


def test_lora_guide_example_runs_and_counts_what_it_says(tmp_path):
    code = _block_after("guides/lora.md", "# LoRA and QLoRA")
    shown = re.search(r"print\(lora.count\(policy\)\)  # (\{.*?\})", code).group(1)
    code = code.replace("/tmp/lora", str(tmp_path))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "LoRA guide example", "exec"), {})
    assert out.getvalue().strip() == shown
    for name in ("base/model.safetensors", "merged/model.safetensors", "adapter/adapter_config.json",
                 "adapter/adapter_model.safetensors"):
        assert (tmp_path / name).exists(), name
