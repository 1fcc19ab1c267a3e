"""The layers of the project, read from every module's imports (ast, nothing imported): no stage
imports another stage, `shared` imports no stage nor the publisher, and `affect_publish`, which
sits above the stages, reads their run folders but imports none of them."""
from __future__ import annotations

import ast

import pytest

from run_utils import ROOT

STAGES = ("pretrain_mae", "finetune_affectnet", "eri_downstream")
PACKAGES = (*STAGES, "shared", "affect_publish")


def imported(path) -> set[str]:
    """The top-level packages of this project that a module imports (relative imports stay in
    their own package, which is allowed)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            names.add(str(node.args[0].value))
    return {name.split(".")[0] for name in names} & set(PACKAGES)


def modules(package: str) -> list:
    found = sorted((ROOT / package).rglob("*.py"))
    assert found, package
    return found


def forbidden(package: str) -> set[str]:
    if package in STAGES:
        return set(STAGES) - {package} | {"affect_publish"}
    if package == "shared":
        return set(STAGES) | {"affect_publish"}
    return set(STAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_each_layer_imports_only_what_is_below_it(package):
    crossings = {str(path.relative_to(ROOT)): sorted(imported(path) & forbidden(package)) for path in modules(package)}
    assert {k: v for k, v in crossings.items() if v} == {}


def test_the_parser_sees_every_form_of_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import shared.config\nfrom eri_downstream.model import x\nimport numpy\n"
                      "def f():\n    from pretrain_mae import export\n    importlib.import_module('affect_publish.cli')\n"
                      "from . import sibling\n")
    assert imported(module) == {"shared", "eri_downstream", "pretrain_mae", "affect_publish"}
