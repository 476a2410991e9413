"""A recipe never reports a result made with other settings (lab/recipe.py's done.json records). The stages are
replaced by fakes that write what the real ones would, so the sequences run in a second."""
import json
from pathlib import Path

import pytest

from conftest import ROOT
from lab import diagnostics, recipe


@pytest.fixture
def fake_stages(monkeypatch):
    """Each stage writes its output from its own flags: the policy's checkpoint holds its --steps, and the
    evaluation reports --episodes episodes with a success count that depends on both."""
    calls = []

    def run_script(script, argv):
        calls.append(script)
        flag = lambda name: argv[len(argv) - argv[::-1].index(name)]  # noqa: E731  (the last one counts)
        out = Path(flag("--out"))
        out.mkdir(parents=True, exist_ok=True)
        if script == "data.py":  # episodes, recorded again where missing (as data.py generate repairs them)
            for i in range(int(flag("--episodes"))):
                if not (out / f"episode_{i:06d}.npz").is_file():
                    (out / f"episode_{i:06d}.npz").write_text(f"episode {i}")
        elif script == "train.py":
            (out / "ckpt.pt").write_text(f"steps {flag('--steps')}")
        elif script in ("eval_sim.py", "eval_real.py"):
            steps = int(Path(flag("--ckpt")).read_text().split()[1])
            n = int(flag("--episodes"))
            k = n * 86 // 100 if steps >= 3000 else 0
            (out / "results.json").write_text(json.dumps({"tasks": {"lift_block": {
                "successes": k, "episodes": n, "success_rate": k / n, "wilson95": [0.0, 1.0]}}}))
        return 0

    monkeypatch.setattr(recipe, "run_script", run_script)
    monkeypatch.setattr(diagnostics, "compare", lambda dirs, out: "")
    return calls


MAIN = ["lift_block", "--workers", "1"]
QUICK = ["--demos", "4", "--steps", "20", "--episodes", "4"]


def test_other_settings_into_a_finished_folder_are_refused(tmp_path, fake_stages, capsys):
    """`recipe.py lift_block --steps 100 --episodes 10` into the main job's finished folder: a refusal naming the
    difference, not the old 86/100."""
    out = ["--out", str(tmp_path / "run")]
    assert recipe.main(MAIN + out) == 0
    assert "86/100" in capsys.readouterr().out
    assert recipe.main(MAIN + out + ["--steps", "100", "--episodes", "10"]) == 2
    text = capsys.readouterr()
    assert "86/100" not in text.out and "success" not in text.out.split("== policy")[-1]
    assert "other settings" in text.err and "--steps '3000' (now '100')" in text.err and "policy" in text.err
    fake_stages.clear()
    assert recipe.main(MAIN + out) == 0  # the same settings again: every stage done already, nothing runs
    assert fake_stages == [] and capsys.readouterr().out.count("done already with these settings") == 3


def test_a_quick_check_then_the_main_job_in_one_folder(tmp_path, fake_stages, capsys):
    """A quick check and then the plain main job into the same --out: the main job refuses (naming the
    demonstrations' count) instead of reporting the quick check's 0/4 with exit 0."""
    out = ["--out", str(tmp_path / "run")]
    assert recipe.main(MAIN + out + QUICK) == 0
    assert "0/4" in capsys.readouterr().out
    assert recipe.main(MAIN + out) == 2
    text = capsys.readouterr()
    assert "0/4" not in text.out and "--episodes '4' (now '50')" in text.err and "data" in text.err


def test_default_folders_keep_quick_checks_apart(tmp_path, fake_stages, capsys, monkeypatch):
    """Without --out, settings other than the recipe's get their own folder under the repository's runs/,
    whatever the working directory; so the quick check then the main job each report their own result."""
    o = lambda *a: recipe.Options(**dict(zip(a[::2], a[1::2])))  # noqa: E731
    assert recipe.out_folder(o("name", "lift_block")) == ROOT / "runs" / "recipes" / "lift_block"
    assert recipe.out_folder(o("name", "lift_block", "steps", 100, "episodes", 10)) == \
        ROOT / "runs" / "recipes" / "lift_block-steps100-episodes10"
    assert recipe.out_folder(o("name", "lift_block", "seed", 1, "train_front_end", True)) == \
        ROOT / "runs" / "recipes" / "lift_block-seed1-own-front-end"
    monkeypatch.setattr(recipe, "ROOT", tmp_path / "repo")
    (tmp_path / "repo" / "frontends").mkdir(parents=True)
    (tmp_path / "repo" / "frontends" / "lift_block.pt").write_bytes((ROOT / "frontends" / "lift_block.pt").read_bytes())
    monkeypatch.chdir(tmp_path)
    assert recipe.main(MAIN + QUICK) == 0
    assert "0/4" in capsys.readouterr().out
    assert recipe.main(MAIN) == 0
    assert "86/100" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "repo" / "runs" / "recipes").iterdir()) == [
        "lift_block", "lift_block-demos4-steps20-episodes4"]


def test_a_changed_input_makes_its_stage_stale(tmp_path, fake_stages, capsys, monkeypatch):
    """The policy records the digest of the front end it started from: a different front end file under the same
    flags is named as the difference."""
    front = tmp_path / "repo" / "frontends" / "lift_block.pt"
    front.parent.mkdir(parents=True)
    front.write_bytes(b"one")
    monkeypatch.setattr(recipe, "ROOT", tmp_path / "repo")
    out = ["--out", str(tmp_path / "run")]
    assert recipe.main(MAIN + out) == 0
    front.write_bytes(b"two")
    capsys.readouterr()
    assert recipe.main(MAIN + out) == 2
    assert "its front end changed since" in capsys.readouterr().err


def test_a_damaged_demonstration_is_repaired_by_rerunning(tmp_path, fake_stages, capsys):
    """The demonstrations' done.json holds each episode's digest: a rerun after one went missing runs the data
    stage again (which records it anew) and leaves the later stages, whose inputs did not change, as they were."""
    out = ["--out", str(tmp_path / "run")]
    assert recipe.main(MAIN + out) == 0
    (tmp_path / "run" / "data" / "episode_000007.npz").unlink()
    fake_stages.clear()
    capsys.readouterr()
    assert recipe.main(MAIN + out) == 0
    assert fake_stages == ["data.py"] and "episode_000007.npz: missing or changed" in capsys.readouterr().out
    assert (tmp_path / "run" / "data" / "episode_000007.npz").is_file()


def test_own_words_are_evaluated_into_their_own_folder(tmp_path):
    """--instruction reaches the evaluator and keeps its result apart from the templates' (eval_seed0/)."""
    stage, script, argv, folder = recipe.commands(recipe.Options(name="lift_block", instruction="Grab the {color} cube!",
                                                                 out=str(tmp_path)))[-1]
    assert argv[-2:] == ["--instruction", "Grab the {color} cube!"] and folder.name == "eval_seed0-grab-the-color-cube"
