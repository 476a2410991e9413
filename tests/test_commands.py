"""Every command the README and the usage docs show runs, as written, with tiny settings appended.

The commands are read from the ```bash blocks of README.md, docs/pipeline.md and robot/README.md (the
history in docs/experiments*.md ran at the commits it names). Each runs in this process through its script's
`main(argv)`, in the order the documents give, with:
  - paths under data/, runs/, outputs/, results/, frontends/ (and bare output files) moved into a temporary folder;
  - an input the documents do not make first (e.g. `--ckpt runs/x/ckpt.pt`) replaced by a small one of its kind;
  - tiny settings appended (argparse keeps the last value: `--steps 20000 ... --steps 2`).
A command that needs a robot or is run by another test says so in SKIP, and that test must exist."""
import re
import shlex
from pathlib import Path

import pytest
import torch

from conftest import ROOT

DOCS = ["README.md", "docs/pipeline.md", "robot/README.md"]
TINY = {  # (script, subcommand) -> appended flags
    ("data.py", "generate"): ["--episodes", "1", "--workers", "1"],
    ("lab/diagnostics.py", "experts"): ["--seeds", "1", "--workers", "1", "--tasks", "lift_block"],
    ("lab/bench.py", "data"): ["--tasks", "lift_block", "--episodes", "1"],
    ("lab/ground.py", None): ["--layouts", "8", "--holdout", "4", "--steps", "2", "--batch-size", "4", "--eval-every", "2",
                          "--preset", "tiny", "--keypoints", "4", "--workers", "1", "--threads", "1"],
    ("lab/ground.py", "check"): ["--steps", "0", "5"],
    ("lab/ground.py", "export"): ["--layouts", "2"],
    ("train.py", None): ["--steps", "2", "--batch-size", "4", "--save-every", "1", "--warmup", "1", "--threads", "1",
                         "--preset", "tiny"],
    ("lab/bench.py", "train"): ["--presets", "tiny", "--seconds", "0", "--steps", "1"],
    ("eval_sim.py", None): ["--episodes", "1", "--workers", "1", "--batch", "1", "--max-steps", "10"],
    ("lab/diagnostics.py", "openloop"): ["--episodes", "1"],
    ("lab/bench.py", "eval"): ["--episodes", "1", "--batch", "1"],
    ("eval_real.py", None): ["--episodes", "1", "--max-steps", "10"],
    ("robot/record.py", None): ["--episodes", "1"],
    ("lab/recipe.py", None): ["--demos", "1", "--steps", "2", "--episodes", "1", "--workers", "1"],
    ("stats.py", "power"): ["--sims", "10"],
}
SKIP = {  # a command's start -> the test that runs it instead
    "python lab/recipe.py lift_block": "tests/test_recipe.py::test_recipe_end_to_end_tiny_then_resumes",
    "python -m pytest": "the suite itself",
    "python -m interop.server": "tests/test_server.py::test_bad_input_is_one_line_and_the_bench_runs",  # serves until stopped
    "python -m interop.lerobot": "tests/test_lerobot.py::test_bad_input_gets_one_line",
    "python eval_sim.py --remote": "tests/test_server.py::test_eval_sim_through_the_server_gives_the_in_process_outcomes",
}
HARDWARE = "--ip"  # a real robot's address: tests/test_franky_sim.py runs the client against franky-sim
SUBCOMMANDS = {"data.py": {"tasks", "generate", "show"}, "lab/ground.py": {"check", "export"},
               "lab/diagnostics.py": {"compare", "probe", "openloop", "experts"}, "lab/bench.py": {"eval", "train", "data"},
               "stats.py": {"power"}}
INPUTS = {"--ckpt": "policy", "--init-from": "policy", "--vision-from": "grounding", "--data": "demos"}


def documented_commands() -> list:
    """(document, command) for every `python ...` line of the documents' bash blocks."""
    out = []
    for doc in DOCS:
        path = ROOT / doc
        if not path.is_file():
            continue
        for block in re.findall(r"```bash\n(.*?)```", path.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                for part in line.split("&&"):
                    cmd = shlex.join(shlex.split(part, comments=True))
                    if cmd.startswith("python "):
                        out.append((doc, cmd))
    return out


def test_the_documents_show_the_main_commands():
    cmds = [c for _, c in documented_commands()]
    for start in ("python lab/recipe.py lift_block", "python data.py generate", "python lab/ground.py", "python train.py --data",
                  "python eval_sim.py --ckpt", "python eval_real.py --robot mujoco", "python -m pytest"):
        assert any(c.startswith(start) for c in cmds), f"no documented command starts with {start!r}"
    assert not [c for c in cmds if "..." in c], "a documented command has a '...' placeholder"
    for start, test in SKIP.items():
        file, name = test.split("::") if "::" in test else (None, None)
        assert file is None or f"def {name}(" in (ROOT / file).read_text(), f"{test} (runs {start!r}) is gone"


class Fixtures:
    """Small inputs of each kind, made on first use."""

    def __init__(self, tmp: Path):
        self.tmp, self.made = tmp, {}

    def get(self, kind: str, task: str = "lift_block") -> str:
        key = (kind, task if kind in ("demos", "grounding", "policy") else "")
        if key not in self.made:
            self.made[key] = getattr(self, "_" + kind)(task)
        return self.made[key]

    def _demos(self, task):
        import data
        out = self.tmp / "fixtures" / f"demos_{task}"
        data.generate(task, 1, out, quiet=True)
        return str(out)

    def _grounding(self, task):
        from lab import ground
        out = self.tmp / "fixtures" / f"ground_{task}"
        assert ground.main(["--task", task, "--out", str(out)] + TINY["lab/ground.py", None]) == 0
        return str(out / "ckpt.pt")

    def _policy(self, task):
        import train
        out = self.tmp / "fixtures" / f"policy_{task}"
        assert train.main(["--data", self.get("demos", task), "--out", str(out), "--vision-from", self.get("grounding", task),
                           "--freeze-vision", "--grounded", "--grounded-only", "--shift", "0", "--symmetry", "--velocity"]
                          + TINY["train.py", None]) == 0
        return str(out / "ckpt.pt")

    def _evaluation(self, task):
        import eval_sim
        out = self.tmp / "fixtures" / "eval"
        eval_sim.main(["--ckpt", self.get("policy"), "--out", str(out)] + TINY["eval_sim.py", None])
        return str(out)


def localise(argv: list, tmp: Path, fx: Fixtures, script: str, sub) -> list:
    """Paths into tmp; inputs that do not exist yet replaced by fixtures of their kind."""
    task = argv[argv.index("--task") + 1] if "--task" in argv else "lift_block"
    moved = lambda p: str(tmp / p) if re.match(r"(data|runs|outputs|results|frontends)/", p) or re.fullmatch(r"[\w.]+\.(png|mp4|json)", p) else p
    out, flag = [], None
    for i, a in enumerate(argv):
        flag = a if a.startswith("-") else flag  # the option a value belongs to (several values: the same)
        if sub == "compare" and "=" in a:  # LABEL=DIR1,DIR2
            label, dirs = a.split("=", 1)
            dirs = [moved(d) if Path(moved(d)).exists() else fx.get("evaluation") for d in dirs.split(",")]
            out.append(label + "=" + ",".join(dirs))
            continue
        if a.startswith("-") or (sub and a == sub and i == 0):
            out.append(a)
            continue
        a = moved(a)
        kind = "grounding" if (script, flag) == ("lab/ground.py", "--init-from") else INPUTS.get(flag)
        if flag is None and (sub == "compare" or (script, sub) in (("data.py", "show"), ("segment.py", None))):
            kind = "evaluation" if sub == "compare" else "demos"
        if kind and not Path(a).exists():
            a = fx.get(kind, task)
        out.append(a)
    return out


def run(script: str, argv: list) -> int:
    import importlib
    mod = importlib.import_module(script[:-3].replace("/", "."))  # lab/ground.py: lab.ground
    try:
        return mod.main(argv) or 0
    except SystemExit as e:
        return e.code or 0


@pytest.mark.parametrize("doc", DOCS)
def test_every_documented_command_runs(doc, tmp_path, monkeypatch):
    if not (ROOT / doc).is_file():
        pytest.skip(f"{doc} does not exist")
    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    fx, ran, mine = Fixtures(tmp_path), [], [c for d, c in documented_commands() if d == doc]
    for cmd in mine:
        if any(cmd.startswith(s) for s in SKIP) or HARDWARE in cmd:
            continue
        words = shlex.split(cmd)[1:]
        script, rest = words[0], words[1:]
        sub = rest[0] if rest and rest[0] in SUBCOMMANDS.get(script, ()) else None
        if script == "eval_real.py" and "--robot" in rest:
            sub = None
        argv = localise(rest, tmp_path, fx, script, sub) + TINY.get((script, sub), [])
        if script == "lab/ablation.py":  # the plan of every run; tests/test_ablation.py runs the tiny protocol
            argv += ["--dry-run", "--out", str(tmp_path / "ab"), "--runs-dir", str(tmp_path / "ab_runs"),
                     "--data-dir", str(tmp_path / "ab_data")]
        code = run(script, argv)
        assert code == 0, f"{doc}: `{cmd}` exited {code} (ran as {script} {' '.join(argv)})"
        ran.append(cmd)
    assert ran or all(HARDWARE in c for c in mine), f"{doc}: no command ran"
    print(f"{doc}: {len(ran)} commands ran")
