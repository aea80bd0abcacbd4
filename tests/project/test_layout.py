"""The package layout: every lib folder has a rank and imports point down."""
import ast
import os
import sys

import pytest
from helpers import ROOT

RANKS = {"errors": 0, "runtime": 1, "formats": 1, "model": 2, "data": 3, "evaluation": 4, "retrieval": 5,
         "training": 6, "analysis": 6, "cli": 7}


def lib_modules():
    for folder, _, files in os.walk(os.path.join(ROOT, "lib")):
        for name in files:
            if name.endswith(".py"):
                yield os.path.relpath(os.path.join(folder, name), ROOT)


def concern(dotted):
    """'lib.model.bert' -> 'model'; 'lib.errors' -> 'errors'."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else None


def imported_lib_modules(path):
    """Every lib.* module that `path` imports, at any depth (function-level imports included)."""
    tree = ast.parse(open(os.path.join(ROOT, path), encoding="utf-8").read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.startswith("lib."))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lib"):
            if node.module == "lib":
                yield from (f"lib.{alias.name}" for alias in node.names)
            else:
                yield node.module


def test_every_folder_has_a_rank():
    folders = {name.removesuffix(".py") for name in os.listdir(os.path.join(ROOT, "lib"))
               if not name.startswith("_") and name != "__pycache__"}
    assert folders == set(RANKS)


@pytest.mark.parametrize("path", sorted(lib_modules()))
def test_imports_point_down(path):
    own = concern(path.removesuffix(".py").replace(os.sep, "."))
    for module in imported_lib_modules(path):
        other = concern(module)
        assert other == own or RANKS[other] < RANKS[own], f"{path} imports {module}: {other} is not below {own}"


def test_a_planted_upward_import_is_caught(tmp_path, monkeypatch):
    planted = tmp_path / "lib" / "model" / "bad.py"
    planted.parent.mkdir(parents=True)
    planted.write_text("from lib.training.trainer import train\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
    with pytest.raises(AssertionError, match="training is not below model"):
        test_imports_point_down(os.path.join("lib", "model", "bad.py"))


def top_level_scripts():
    """The entry points beside lib/ (and data/make_demo.py): every .py file with a `main`."""
    paths = [name for name in os.listdir(ROOT) if name.endswith(".py")] + [os.path.join("data", "make_demo.py")]
    return sorted(path for path in paths if "def main" in open(os.path.join(ROOT, path), encoding="utf-8").read())


@pytest.mark.parametrize("path", top_level_scripts())
def test_every_script_goes_through_the_one_error_wrapper(path):
    # catches: a script with its own try/except printing `error: {error}` (an OSError then reads
    # "[Errno 2] ..." and a torchrun failure is printed by every process); cleaning up and raising is fine.
    tree = ast.parse(open(os.path.join(ROOT, path), encoding="utf-8").read(), path)
    [main] = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "main"]
    assert [ast.unparse(decorator) for decorator in main.decorator_list] == ["entry_point"]
    handlers = [node for node in ast.walk(main) if isinstance(node, ast.ExceptHandler)]
    assert all(isinstance(handler.body[-1], ast.Raise) for handler in handlers), "main answers an error itself"


def test_the_scripts_are_found():
    assert {"train.py", "eval.py", "check_data.py", "retrieve.py", os.path.join("data", "make_demo.py")} <= set(
        top_level_scripts())
