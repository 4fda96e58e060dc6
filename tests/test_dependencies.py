"""Every declared runtime dependency is imported somewhere in src/ (no dead weight)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMPORT_NAME = {"pillow": "PIL"}


def declared() -> list[str]:
    """The names in pyproject.toml's [project] dependencies list (Python 3.10 has no tomllib)."""
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.M | re.S)
    assert block, "pyproject.toml has no dependencies list"
    return [re.split(r"[<>=!~\[ ;]", req, maxsplit=1)[0]
            for req in re.findall(r'^\s*"([^"]+)"', block[1], re.M)]


def test_declared_dependencies_are_imported():
    source = "\n".join(p.read_text() for p in (ROOT / "src").rglob("*.py"))
    names = declared()
    assert "torch" in names and "monai" in names
    for name in names:
        module = IMPORT_NAME.get(name, name.replace("-", "_"))
        assert re.search(rf"^\s*(import|from) {re.escape(module)}\b", source, re.M), (
            f"{name} is declared in pyproject.toml but nothing in src/ imports {module}")
