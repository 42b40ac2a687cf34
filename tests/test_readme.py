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
