"""The named recipes (lab/recipe.py) end to end on tiny settings, and the shipped front ends (frontends/)."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ROOT
import eval_sim  # noqa: E402
from lab import diagnostics, ground, recipe  # noqa: E402

torch.set_num_threads(1)
SHIPPED = sorted((ROOT / "frontends").glob("*.pt"))


def test_every_recipe_has_its_shipped_front_end():
    for name, r in recipe.RECIPES.items():
        path = ROOT / r.front_end
        assert path.is_file(), f"recipe {name}: {r.front_end} is not shipped (ground.py export)"
        info = json.loads(path.with_suffix(".json").read_text())
        assert info["task"] == r.task and info["stages"] and all(s["command"].startswith(("python ground.py", "python lab/ground.py"))
                                                                 for s in info["stages"])
        assert path.stat().st_size < 10e6, "small enough for git"


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_front_end_locates_the_named_objects(path):
    """On freshly rendered layouts (half from inside the expert's rollout) the error is what its .json says, up
    to the spread of a few layouts; a front end that does not locate would be at the mean predictor's ~20 cm."""
    info = json.loads(path.with_suffix(".json").read_text())
    err = ground.held_out(path, layouts=8, first_seed=ground.HOLDOUT_SEED_OFFSET + 7_000)
    for role, e, ref in zip(info["roles"], err, info["shipped_held_out_cm"]):
        assert e < 2 * ref + 1.0, f"{path.name}: {role} {e:.1f} cm on new layouts, {ref:.1f} cm when shipped"


def test_recipe_end_to_end_tiny_then_resumes(tmp_path, capsys):
    """`python lab/recipe.py lift_block` with 2 demonstrations, 2 training steps, 2 episodes: every stage runs from
    the shipped front end, the table and wall time are printed, a video is written; a rerun skips every stage.
    The run's checkpoint then serves the evaluator's own checks (a task it never trained on, open loop)."""
    out = tmp_path / "lift"
    argv = ["lift_block", "--out", str(out), "--demos", "2", "--steps", "2", "--episodes", "2", "--workers", "1"]
    assert recipe.main(argv) == 0
    text = capsys.readouterr().out
    res = json.loads((out / "eval_seed0" / "results.json").read_text())["tasks"]["lift_block"]
    assert res["episodes"] == 2 and res["successes"] + sum(res["failure_types"].values()) == 2
    assert "| lift_block | 1 |" in text and "wall time" in text and list((out / "eval_seed0").glob("*.mp4"))
    ck = torch.load(out / "policy" / "ckpt.pt", weights_only=True)
    assert ck["options"]["vision_from"].endswith("frontends/lift_block.pt") and ck["options"]["stage_weight"] == 0.1
    assert list((out / "data").glob("grounded_*.npy")), "trained on the cached front end"
    assert recipe.main(argv) == 0
    assert capsys.readouterr().out.count("done already") == 3
    # a task the checkpoint never trained on: one line naming its tasks, before any rollout
    r = subprocess.run([sys.executable, "eval_sim.py", "--ckpt", str(out / "policy" / "ckpt.pt"), "--task",
                        "place_block", "--episodes", "1", "--out", str(tmp_path / "other")], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "was trained on lift_block" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "other" / "results.json").exists()
    diagnostics.main(["openloop", "--ckpt", str(out / "policy" / "ckpt.pt"), "--data", str(out / "data"), "--episodes", "2",
                      "--out", str(tmp_path / "ol.json")])
    ol = json.loads((tmp_path / "ol.json").read_text())
    assert "0" in ol["steps"] and all(np.isfinite(v["error_rad"]) and v["demo_motion_rad"] > 0 for v in ol["steps"].values())
    # by phase: lift_block's demonstrations close once, so every chunk boundary is before or after that close
    assert set(ol["phases"]) == {"0", "1"}, ol["phases"]
    assert all(v["queries"] > 0 and np.isfinite(v["joint_error_rad"]) and 0 <= v["gripper_error"] <= 1
               for v in ol["phases"].values())
    eval_sim.main(["--ckpt", str(out / "policy" / "ckpt.pt"), "--task", "lift_block", "--episodes", "2",
                   "--demo-seeds", "--max-steps", "10", "--out", str(tmp_path / "demo")])
    seeds = [e["seed"] for e in json.loads((tmp_path / "demo" / "results.json").read_text())["tasks"]["lift_block"]["per_episode"]]
    assert seeds == [0, 1]


def test_recipe_in_one_process_from_the_command_line(tmp_path):
    """--workers 1 records the demonstrations in the recipe's own process (a MuJoCo EGL context), then trains:
    torch imported after that context segfaulted the process at the policy stage (this suite imports torch first,
    so only a fresh interpreter shows it)."""
    r = subprocess.run([sys.executable, "lab/recipe.py", "lift_block", "--out", str(tmp_path / "r"), "--demos", "1",
                        "--steps", "1", "--episodes", "1", "--workers", "1"], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0 and "lift_block: success" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]


def test_recipe_list_and_errors(capsys):
    assert recipe.main(["--list"]) == 0
    text = capsys.readouterr().out
    assert all(f"{name}:" in text for name in recipe.RECIPES) and "python train.py" in text
    assert recipe.main(["nope"]) == 2
    assert "unknown recipe 'nope'" in capsys.readouterr().err


def test_train_front_end_chains_the_ground_stages():
    """--train-front-end: the recipe's ground.py stages run in order, each from the previous one's checkpoint,
    and the policy starts from the last; without it, from the shipped file."""
    cmds = recipe.commands(recipe.Options(name="lift_block", out="o", train_front_end=True))
    ground_runs = [argv for _, script, argv, _ in cmds if script == "lab/ground.py"]
    assert len(ground_runs) == 2 and "--init-from" not in ground_runs[0]
    first_ckpt = ground_runs[0][ground_runs[0].index("--out") + 1] + "/ckpt.pt"
    assert ground_runs[1][ground_runs[1].index("--init-from") + 1] == first_ckpt
    train = next(argv for _, script, argv, _ in cmds if script == "train.py")
    assert train[train.index("--vision-from") + 1] == ground_runs[1][ground_runs[1].index("--out") + 1] + "/ckpt.pt"
    shipped = next(argv for _, script, argv, _ in recipe.commands(recipe.Options(name="lift_block")) if script == "train.py")
    assert shipped[shipped.index("--vision-from") + 1].endswith("frontends/lift_block.pt")
