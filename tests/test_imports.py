"""The import layering (README, reading order): imports flow one way, with no circle, counting imports inside
functions. The modules are the top-level files and those of the packages world/, robot/ and lab/ (named
world.sim, robot.hardware, lab.recipe; a package's __init__.py is the package itself).

  robot.franka  <-  world  <-  segment, data, dataset, model (+frontend), train, eval_sim  <-  eval_real,
  robot.hardware, robot.record  <-  lab

The world (scenes, tasks, experts) knows no policy, evaluator or robot client and imports nothing above it but
robot.franka; segment, stats and plots are numpy / PIL leaves; the model knows no simulator; nothing outside lab/
imports lab; the README's reading order lists every module after the modules it imports."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("world", "robot", "lab", "interop")

# module -> project modules it must never import (directly, or through a function body)
WORLD = ("world.sim", "world.twin", "robot.franka", "world", "world.experts")
ABOVE_WORLD = ("model", "frontend", "train", "lab.ground", "eval_sim", "robot.hardware", "eval_real", "robot.record",
               "lab.ablation", "plots")
FORBIDDEN = {
    **{w: ABOVE_WORLD + ("data", "segment") for w in WORLD},
    "robot.franka": ABOVE_WORLD + ("data", "segment", "world.sim", "world.twin", "world", "world.experts"),
    # numpy at import; only its --plot command draws, through plots.py (a leaf: PIL and numpy)
    "segment": tuple(m for m in ABOVE_WORLD + WORLD + ("data",) if m != "plots"),
    "plots": tuple(ABOVE_WORLD + WORLD + ("data", "segment")),
    "stats": tuple(ABOVE_WORLD + WORLD + ("data", "dataset", "segment", "lab.recipe")),  # numpy only
    "model": WORLD + ("data", "train", "lab.ground", "eval_sim", "eval_real", "robot.record", "lab.ablation"),
    "frontend": WORLD + ("data", "train", "lab.ground", "eval_sim", "eval_real", "robot.record", "lab.ablation"),
    "data": ("model", "frontend", "train", "lab.ground", "eval_sim", "eval_real", "robot.record", "lab.ablation"),
    "dataset": ("train", "lab.ground", "eval_sim", "eval_real", "robot.record", "lab.ablation", "world.sim",
                "world.twin", "world.experts"),
    "train": ("eval_sim", "eval_real", "robot.record", "lab.ablation", "world.sim", "world.twin", "world.experts"),
    "eval_sim": ("eval_real", "robot.record", "lab.ablation", "interop.server"),  # interop.client only
    "eval_real": ("robot.record", "lab.ablation", "interop.server"),
    # the real arm's drivers know the Franka facts only: no policy, no simulator
    "robot.hardware": tuple(m for m in ABOVE_WORLD + WORLD + ("data", "dataset", "segment", "stats", "lab.recipe")
                            if m not in ("robot.franka", "robot.hardware")),
}
# module -> the only project modules it may import (the leaves, as today)
ONLY = {"robot.franka": (), "segment": ("plots",), "stats": (), "plots": (),
        "interop.client": (),  # numpy, msgpack, websockets: a robot PC runs it without torch
        "interop.server": ("model", "data", "interop.client")}  # the policy and parse_options; no world, eval, lab

# interop/lerobot.py (LeRobot datasets in and out): it reads and writes episodes (data, segment, and what lies below
# train); only interop/ and lab/ import it.
FORBIDDEN["interop.lerobot"] = ("train", "eval_sim", "eval_real", "robot.record", "robot.hardware", "world.sim",
                                "world.twin", "world.experts")
IMPORTED_ONLY_BY = {"interop.lerobot": ("interop", "lab")}  # module -> the packages that may import it


def module_files(root: Path = ROOT) -> dict:
    """Project module name -> file: the top-level *.py files and the packages' modules."""
    files = {p.stem: p for p in root.glob("*.py")}
    for pkg in PACKAGES:
        for p in sorted((root / pkg).glob("*.py")):
            files[pkg if p.stem == "__init__" else f"{pkg}.{p.stem}"] = p
    return files


def module_of(path: str):
    """`world/sim.py` -> world.sim, `world/__init__.py` -> world, `data.py` -> data; None for anything else."""
    if not path.endswith(".py"):
        return None
    name = path[:-3].replace("/", ".")
    return name[:-len(".__init__")] if name.endswith(".__init__") else name


def project_imports(path: Path, modules: set, name: str) -> set:
    """Project modules that `path` (module `name`) imports anywhere (top level or inside functions).
    `import a.b` and `from a.b import c` import a.b; `from a import b` imports a.b where that is a module, else a."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package
                parts = package.split(".") if package else []
                parts = parts[:len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            for a in node.names:
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
    resolved = set()
    for m in found:  # `import world.sim.x` (not a module) counts as world.sim
        while m and m not in modules:
            m = m.rpartition(".")[0]
        if m:
            resolved.add(m)
    return resolved - {name}


def graph(root: Path = ROOT) -> dict:
    files = module_files(root)
    return {m: project_imports(p, set(files), m) for m, p in files.items()}


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


def in_world(m: str) -> bool:
    return m == "world" or m.startswith("world.")


def forbidden_edges(g: dict) -> list:
    bad = set()
    for m, deps in g.items():
        for n in deps:
            lab = n == "lab" or n.startswith("lab.")
            if (n in FORBIDDEN.get(m, ()) or (m in ONLY and n not in ONLY[m])
                    or (lab and not (m == "lab" or m.startswith("lab.")))  # nothing outside lab/ imports lab
                    or (in_world(m) and not (in_world(n) or n == "robot.franka"))  # the world: itself and franka
                    or (n in IMPORTED_ONLY_BY and m.split(".")[0] not in IMPORTED_ONLY_BY[n])):
                bad.add(f"{m} -> {n}")
    return sorted(bad)


def test_imports_have_no_circle_and_no_forbidden_edge():
    g = graph()
    assert {"world.sim", "world.twin", "world", "world.experts", "robot.franka", "robot.hardware", "robot.record",
            "lab.recipe", "lab.ablation", "lab.ground", "lab.diagnostics", "lab.bench", "model", "train", "eval_sim", "eval_real",
            "segment"} <= set(g)
    assert "world.sim" in g["world"] and "world.sim" in g["world.twin"] and "robot.franka" in g["robot.hardware"]
    assert {"data", "segment"} <= g["interop.lerobot"]
    assert cycle(g) is None, f"import circle: {' -> '.join(cycle(g))}"
    assert not forbidden_edges(g), f"forbidden imports: {forbidden_edges(g)}"


def copy_tree(dst: Path, module: str = "", added: str = "") -> None:
    """The project's modules under dst, with `added` appended to `module` (an indented line goes in a function)."""
    for m, p in module_files().items():
        extra = ("\n" + added if not added.startswith(" ") else "\ndef _added():\n" + added) if m == module else ""
        out = dst / p.relative_to(ROOT)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(p.read_text() + extra)


@pytest.mark.parametrize("module,line", [
    ("model", "    from world import sim\n"),          # the model would know a simulator
    ("world.twin", "def f():\n    import eval_real\n"),  # the world would know the robot client (in a function)
    ("segment", "from data import load_episode\n"),
    ("world.sim", "import world\n"),                     # a circle: world imports world.sim
    ("world.experts", "    import model\n"),             # the world imports nothing above it
    ("eval_sim", "from lab.diagnostics import compare\n"),  # nothing outside lab/ imports lab
    ("data", "    from lab import recipe\n"),
    ("robot.hardware", "from world import twin\n"),      # the drivers know the Franka facts only
    ("robot.franka", "import stats\n"),                  # a leaf
    ("stats", "    import data\n"),
    ("interop.client", "    import model\n"),          # the remote policy's client needs no project module
    ("interop.server", "from world import sim\n"),
    ("eval_sim", "    from interop import server\n"),  # evaluation knows the client only
    ("train", "    from interop import lerobot\n"),   # only interop/ and lab/ import interop.lerobot
    ("interop.lerobot", "import train\n"),
])
def test_the_check_fails_on_an_added_import(tmp_path, module, line):
    base = graph()
    copy_tree(tmp_path, module, line)
    g = graph(tmp_path)
    assert set(g) == set(base)
    new_edge = len(forbidden_edges(g)) > len(forbidden_edges(base))
    new_circle = cycle(base) is None and cycle(g) is not None
    assert new_edge or new_circle, f"adding {line.strip()!r} to {module} went unnoticed"


# ----------------------------------------------------------------------------- the README's reading order

READING_HEADING = re.compile(r"^#+\s.*(reading order|reading guide)", re.I)
ITEM = re.compile(r"^\s*\d+[.)]\s+`([^`]+)`")


def reading_order(text: str):
    """The paths of the README's reading-order section (a heading containing "Reading order" or "reading guide",
    then a numbered list whose items start with a backticked path: 1. `segment.py` ...), in order; None when
    there is no such section or it lists no path."""
    lines = text.splitlines()
    start = next((i for i, l in enumerate(lines) if READING_HEADING.match(l)), None)
    if start is None:
        return None
    paths = []
    for line in lines[start + 1:]:
        if line.startswith("#"):
            break
        if (m := ITEM.match(line)):
            paths.append(m.group(1).strip())
    return paths or None


def reading_order_violations(paths: list, g: dict) -> list:
    """Each listed module imports only listed modules listed before it (files not listed are ignored)."""
    order = [m for m in map(module_of, paths) if m in g]
    listed, bad = set(order), []
    for i, m in enumerate(order):
        later = sorted((g[m] & listed) - set(order[:i]))
        bad += [f"{m} (item {i + 1}) imports {n}, listed after it" for n in later]
    return bad


def test_reading_order_parser():
    text = ("# x\n\n## Files, in reading order\n\n1. `segment.py` the stages\n2. `world/sim.py`: the scene\n"
            "3) `world/__init__.py` suites\n   more text\n4. `docs/` prose\n\n## Next\n5. `data.py`\n")
    assert reading_order(text) == ["segment.py", "world/sim.py", "world/__init__.py", "docs/"]
    assert [module_of(p) for p in reading_order(text)] == ["segment", "world.sim", "world", None]
    assert reading_order("## Reading order\n\n| file |\n|---|\n| `x.py` |\n") is None
    g = {"segment": set(), "world.sim": set(), "world": {"world.sim", "world.twin"}, "data": {"world"}}
    assert reading_order_violations(["segment.py", "world/sim.py", "world/__init__.py", "data.py"], g) == []
    assert reading_order_violations(["data.py", "world/__init__.py"], g) == ["data (item 1) imports world, listed after it"]


def test_the_readme_reading_order_lists_modules_after_their_imports():
    paths = reading_order((ROOT / "README.md").read_text())
    assert paths, ("README.md has no reading-order section (a heading with 'Reading order', then a numbered list "
                   "of `path` items)")
    missing = [p for p in paths if p.endswith(".py") and not (ROOT / p).is_file()]
    assert not missing, f"README's reading order lists files that do not exist: {missing}"
    bad = reading_order_violations(paths, graph())
    assert not bad, "README's reading order lists a module before what it imports: " + "; ".join(bad)
