"""The README's Python examples run: NumPy ones everywhere, CuPy ones (marked gpu) on a GPU."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize(
    "code",
    [pytest.param(code, marks=[pytest.mark.gpu] if "cupy" in code else [], id=f"example{i + 1}")
     for i, code in enumerate(BLOCKS)],
)
def test_readme_example_runs(code, capsys):
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out.strip()
