"""The README: its loss example prints exactly what it says it prints, the two quick-start commands, its length."""

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


def test_readme_is_short_and_links_the_docs():
    text = README.read_text()
    assert len(text.splitlines()) <= 250, "the README holds what jax_irl is, the quick start and links; the rest: docs/"
    root = README.parent
    for link in re.findall(r"`(docs/[\w/.-]+\.md)`", text):
        assert (root / link).exists(), f"README links {link}, which does not exist"
