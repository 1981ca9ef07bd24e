"""The README's examples run as written: every python block under ``## Library`` in this
process, and the pytest-plugin block as another project's test file (see
``tests/guest/test_pytest_plugin.py``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_blocks(heading: str) -> list[str]:
    """The python blocks of the README section that starts at ``heading``."""
    text = README.read_text()
    section = text[text.index(heading):]
    section = section[:section.find("\n## ", len(heading))] if "\n## " in section[
        len(heading):] else section
    return re.findall(r"```python\n(.*?)```", section, re.S)


LIBRARY = readme_blocks("## Library")


def test_the_library_section_has_its_examples() -> None:
    assert len(LIBRARY) >= 3  # the machine, the hypervisor, the plugin


@pytest.mark.parametrize("index", [0, 1])
def test_library_example_runs(index: int) -> None:
    exec(compile(LIBRARY[index], "README.md", "exec"), {})  # our own README, as a user runs it
