"""The import layering (README, "Files in reading order"): imports flow one way, with no circle, counting
imports inside functions. The world (scenes, tasks, experts) knows no policy, evaluator or robot client;
segment.py is numpy-only; the model knows no simulator; evaluators and the robot client sit on top."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# module -> project modules it must never import (directly, or through a function body)
WORLD = ("sim", "twin", "franka", "world", "experts")
ABOVE_WORLD = ("model", "train", "ground", "eval_sim", "hardware", "eval_real", "record", "ablation", "plots")
FORBIDDEN = {
    **{w: ABOVE_WORLD + ("data", "segment") for w in WORLD},
    "franka": ABOVE_WORLD + ("data", "segment", "sim", "twin", "world", "experts"),
    # numpy at import; only its --plot command draws, through plots.py (a leaf: PIL and numpy)
    "segment": tuple(m for m in ABOVE_WORLD + WORLD + ("data",) if m != "plots"),
    "plots": tuple(ABOVE_WORLD + WORLD + ("data", "segment")),
    "stats": tuple(ABOVE_WORLD + WORLD + ("data", "dataset", "segment", "recipe")),  # numpy only
    "model": WORLD + ("data", "train", "ground", "eval_sim", "eval_real", "record", "ablation"),
    "data": ("model", "train", "ground", "eval_sim", "eval_real", "record", "ablation"),
    "dataset": ("train", "ground", "eval_sim", "eval_real", "record", "ablation", "sim", "twin", "experts"),
    "train": ("eval_sim", "eval_real", "record", "ablation", "sim", "twin", "experts"),
    "eval_sim": ("eval_real", "record", "ablation"),
    "eval_real": ("record", "ablation"),
    # the real arm's drivers know the Franka facts only: no policy, no simulator
    "hardware": tuple(m for m in ABOVE_WORLD + WORLD + ("data", "dataset", "segment", "stats", "recipe")
                      if m not in ("franka", "hardware")),
}


def project_imports(path: Path, modules: set) -> set:
    """Project modules that `path` imports anywhere (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return (found & modules) - {path.stem}


def graph(root: Path = ROOT) -> dict:
    files = {p.stem: p for p in root.glob("*.py")}
    return {m: project_imports(p, set(files)) for m, p in files.items()}


def cycle(g: dict):
    """One import circle as a list of modules, or None."""
    state = {}

    def visit(m, path):
        state[m] = "open"
        for n in sorted(g.get(m, ())):
            if state.get(n) == "open":
                return path[path.index(n):] + [n]
            if n not in state and (c := visit(n, path + [n])):
                return c
        state[m] = "done"

    for m in sorted(g):
        if m not in state and (c := visit(m, [m])):
            return c
    return None


def forbidden_edges(g: dict) -> list:
    return [f"{m} -> {n}" for m, deps in g.items() for n in sorted(deps) if n in FORBIDDEN.get(m, ())]


def test_imports_have_no_circle_and_no_forbidden_edge():
    g = graph()
    assert {"sim", "twin", "world", "model", "train", "eval_sim", "eval_real", "segment"} <= set(g)
    assert cycle(g) is None, f"import circle: {' -> '.join(cycle(g))}"
    assert not forbidden_edges(g), f"forbidden imports: {forbidden_edges(g)}"


@pytest.mark.parametrize("module,line", [
    ("model", "    import sim\n"),                 # the model would know a simulator
    ("twin", "def f():\n    import eval_real\n"),   # the world would know the robot client (in a function)
    ("segment", "from data import load_episode\n"),
    ("sim", "import world\n"),                      # a circle: world imports sim
])
def test_the_check_fails_on_an_added_import(tmp_path, module, line):
    base = graph()
    for p in ROOT.glob("*.py"):
        added = ("\n" + line if not line.startswith(" ") else "\ndef _added():\n" + line) if p.stem == module else ""
        (tmp_path / p.name).write_text(p.read_text() + added)
    g = graph(tmp_path)
    new_edge = len(forbidden_edges(g)) > len(forbidden_edges(base))
    new_circle = cycle(base) is None and cycle(g) is not None
    assert new_edge or new_circle, f"adding {line.strip()!r} to {module}.py went unnoticed"
