"""The import graph runs one way, down the floors (README, "Layout").

Parses every module's imports (no execution) and fails on an import of a
higher floor, e.g. models importing serving or beam_jobs importing models.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Lowest first; a package may import its own floor and any lower one.
FLOORS = ("feature_contract", "beam_jobs", "models", "serving", "components", "pipelines")


def _imported_packages(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & set(FLOORS + ("bench",))


def _violations(package: str, root: pathlib.Path = ROOT) -> list[str]:
    allowed = set(FLOORS[:FLOORS.index(package) + 1])
    out = []
    for path in sorted((root / package).rglob("*.py")):
        for imported in sorted(_imported_packages(path) - allowed):
            out.append(f"{path.relative_to(root)} imports {imported}")
    return out


@pytest.mark.parametrize("package", FLOORS)
def test_no_package_imports_a_higher_floor(package):
    assert _violations(package) == []


def test_the_contract_imports_nothing_of_feedrec():
    assert _imported_packages(ROOT / "feature_contract" / "feature_config.py") == set()


def test_a_higher_import_is_caught(tmp_path):
    # The check itself can fail: a models module importing serving is reported.
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "bad.py").write_text("from serving import store\nimport beam_jobs\n")
    assert _violations("models", tmp_path) == ["models/bad.py imports serving"]
