"""The import graph of opso_core.ml has no cycles: cnn imports persistence and training, never the
other way round (persistence hands load_model the description and weights; CNN.from_description
builds the model)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import opso_core.ml

ML = Path(opso_core.ml.__file__).parent
PACKAGE = "opso_core.ml"
MODULES = sorted(p.stem for p in ML.glob("*.py"))


def imports_of(module: str, *, module_level_only: bool) -> set[str]:
    """The opso_core.ml modules ``module`` imports (``__init__`` for names of the package itself);
    with ``module_level_only``, those imported when it is imported (not inside functions)."""
    found = set()

    def add(target: str, names=()):
        if target == PACKAGE:
            for name in names:
                found.add(name if name in MODULES else "__init__")
        elif target.startswith(PACKAGE + "."):
            found.add(target[len(PACKAGE) + 1:].split(".")[0])

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if module_level_only and inner:
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(alias.name)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                add(child.module, [alias.name for alias in child.names])
            visit(child, inner)

    visit(ast.parse((ML / f"{module}.py").read_text()), False)
    found.discard(module)
    return found


def graph(*, module_level_only: bool, among=MODULES) -> dict[str, set[str]]:
    return {m: imports_of(m, module_level_only=module_level_only) & set(among) for m in among}


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``edges`` (as a path that returns to its start), or None."""
    state = {}

    def visit(node, path):
        state[node] = "open"
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state:
                found = visit(target, path + [target])
                if found:
                    return found
        state[node] = "done"
        return None

    for start in sorted(edges):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_the_graph_sees_the_imports_it_should():
    assert {"persistence", "training", "cnn_architectures", "loss", "utils"} <= imports_of("cnn", module_level_only=False)
    assert "persistence" in imports_of("cnn", module_level_only=True)
    assert "training" not in imports_of("cnn", module_level_only=True)  # inside CNN.train
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_persistence_never_imports_cnn():
    assert "cnn" not in imports_of("persistence", module_level_only=False)


@pytest.mark.parametrize("module_level_only", [True, False], ids=["module level", "with imports in functions"])
def test_no_cycle_among_cnn_persistence_and_training(module_level_only):
    assert cycle(graph(module_level_only=module_level_only, among=("cnn", "persistence", "training"))) is None


@pytest.mark.parametrize("module_level_only", [True, False], ids=["module level", "with imports in functions"])
def test_no_cycle_in_opso_core_ml(module_level_only):
    edges = graph(module_level_only=module_level_only, among=[m for m in MODULES if m != "__init__"])
    assert cycle(edges) is None


def test_loading_persistence_and_training_does_not_load_cnn():
    script = ("import sys; import opso_core.ml.persistence, opso_core.ml.training, opso_core.ml.model_input; "
              "assert 'opso_core.ml.cnn' not in sys.modules, 'cnn was imported'")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
