"""The README's example runs and prints exactly what the README says it prints."""

import contextlib
import io
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_prints_what_it_shows():
    text = README.read_text()
    match = re.search(r"### Example\n\n```python\n(.*?)```\n\nprints\n\n```text\n(.*?)```", text, re.S)
    assert match, "README.md lost its '### Example' code block and the output shown under it"
    code, shown = match.groups()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README example", "exec"), {})
    assert out.getvalue() == shown


def test_readme_quick_start_is_the_two_commands():
    text = README.read_text()
    assert "bash tools/run.sh" in text and "bash tools/test.sh" in text


def test_readme_models_example_runs_on_local_folders(tmp_path, tiny_hf_llama):
    """The models section's code, with its placeholder paths pointed at real local folders."""
    llama, bert = tiny_hf_llama
    text = README.read_text()
    code = re.search(r"## Models, checkpoints, sampling and reward models.*?```python\n(.*?)```", text, re.S).group(1)
    code = code.replace("/path/to/local/llama", str(llama)).replace("/path/to/local/bert", bert)
    code = code.replace("/tmp/export", str(tmp_path / "export"))
    # The reward model reads prompt + response; here both models share MiniLM's vocabulary.
    code = code.replace("encoder = hf.encoder_from_pretrained", "import numpy as np\n"
                        "reward_tokens = np.concatenate([np.repeat(tokens, 4, 0), np.asarray(out.tokens)], 1)\n"
                        "reward_mask = np.concatenate([np.repeat(mask, 4, 0), np.asarray(out.mask)], 1)\n"
                        "encoder = hf.encoder_from_pretrained")
    scope = {}
    exec(compile(code, "README models example", "exec"), scope)
    assert scope["out"].tokens.shape == (8, 64) and scope["rewards"].shape == (8, 4)
    assert scope["best"].shape == (2,) and scope["accept"].shape == (2, 4)
    assert (tmp_path / "export" / "model.safetensors").exists()


def test_readme_custom_tool_example_is_a_working_tool():
    from jax_irl import symbolic
    text = README.read_text()
    code = re.search(r"Write your own tool as any object.*?```python\n(.*?)```", text, re.S).group(1)
    scope = {}
    exec(compile(code, "README tool example", "exec"), scope)
    tool = scope["NoDigits"]()
    cert = symbolic.safe_check(tool, "", "ab1c")
    assert not cert.correct and [(s.start, s.end) for s in cert.spans] == [(2, 3)]
    assert symbolic.token_rewards(cert, [(0, 2), (2, 3), (3, 4)]).tolist() == [1.0, 0.0, 0.0]


def test_readme_lora_example_runs_and_counts_what_it_says(tmp_path):
    text = README.read_text()
    code = re.search(r"## Parameter-efficient fine-tuning: LoRA and QLoRA.*?```python\n(.*?)```", text, re.S).group(1)
    shown = re.search(r"print\(lora.count\(policy\)\)  # (\{.*?\})", code).group(1)
    code = code.replace("/tmp/lora", str(tmp_path))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README LoRA example", "exec"), {})
    assert out.getvalue().strip() == shown
    for name in ("base/model.safetensors", "merged/model.safetensors", "adapter/adapter_config.json",
                 "adapter/adapter_model.safetensors"):
        assert (tmp_path / name).exists(), name
