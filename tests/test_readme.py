"""The README's library example runs as written."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_library_example_runs() -> None:
    text = README.read_text()
    section = text[text.index("## Library"):]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None, "no python block under ## Library"
    exec(compile(code.group(1), "README.md", "exec"), {})  # our own README, as a user runs it
