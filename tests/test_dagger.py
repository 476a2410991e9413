"""The closed-loop expert finishes a task from where a perturbation left it, where the scripted plan cannot;
lab/dagger.py records the expert's takeovers of a policy's rollouts, and a recipe's recovery rounds chain them."""
import json

import numpy as np
import pytest

import world
from lab import dagger
from world import experts


def _drop_at(task, seed, k, closed_loop):
    """The scripted plan to step k (natural grasp, as the recipes); there the hands open for 8 steps (a slip):
    the plan goes on regardless, or closed_loop takes over. Returns (success, objects held at step k)."""
    env = world.make_env(task, render=False)
    env.reset(seed)
    x = experts.make_expert(env)
    x.GRASP_YAW = False
    grippers = [7] if len(env.arms) == 1 else [6, 13]
    held = None
    for t, a in enumerate(x.actions()):
        if t == k:
            held = sum(len(experts.holding(env, arm)) for arm in env.arms)
            if closed_loop:
                return dagger.expert_from(env, 2 * env.task.max_steps, open_hands=True)[0], held
        if k <= t < k + 8:
            a = a.copy()
            a[grippers] = 1.0
        env.step(a, render=False)
    for _ in range(20):
        env.step(a, render=False)
    return env.success, held


@pytest.mark.parametrize("task,seed,k", [("place_block", 3, 45), ("stack_two", 3, 110), ("franka_stack", 3, 100)])
def test_closed_loop_picks_up_a_dropped_block_again(task, seed, k):
    scripted, held = _drop_at(task, seed, k, closed_loop=False)
    assert held == 1 and not scripted  # a block in hand when the hands open; the plan alone fails
    assert _drop_at(task, seed, k, closed_loop=True) == (True, 1)


def test_closed_loop_after_a_shove_and_from_the_start():
    rows = [dagger.perturbed_start("stack_two", 1_000_000 + i, kind) for i in range(3) for kind in ("none", "shove")]
    assert all(r["success"] for r in rows), rows
    env = world.make_env("stack_two", render=False)
    env.reset(5)
    assert dagger.expert_from(env, 400)[0]  # from home, closed_loop alone does the whole task


def test_shove_moves_the_free_objects_only():
    env = world.make_env("stack_two", render=False)
    env.reset(3)
    x = experts.make_expert(env)
    for t, a in zip(range(110), x.actions()):  # the second block in hand (test above)
        env.step(a, render=False)
    held = experts.holding(env, "left") | experts.holding(env, "right")
    before = {n: env.obj_pos(n) for n in env.obj_qadr}
    dagger.perturb(env, "shove", np.random.default_rng(0))
    moved = [n for n in before if np.linalg.norm(env.obj_pos(n)[:2] - before[n][:2]) > 0.019]
    free = [n for n in before if abs(before[n][1]) < 0.45 and n not in held]
    assert len(held) == 1 and len(free) >= 2 and sorted(moved) == sorted(free)


def test_recovery_round_tiny_end_to_end_then_resumes(tmp_path, capsys, monkeypatch):
    """A recipe with one recovery round, at toy size: the takeovers are recorded in the demonstrations' format,
    the next policy trains on both folders, and a rerun finds every stage done."""
    import dataclasses
    from lab import recipe
    recipe.RECIPES["_tiny_recovery"] = dataclasses.replace(recipe.RECIPES["place_block"],
                                                           recovery=(("--takeovers", "1", "--latest", "0.2"),))
    try:
        out = tmp_path / "r"
        argv = ["_tiny_recovery", "--out", str(out), "--demos", "2", "--steps", "2", "--episodes", "1", "--workers", "1"]
        assert recipe.main(argv) == 0
        meta = json.loads((out / "round1" / "data" / "meta.json").read_text())
        rows = meta["takeovers"]
        assert [r["seed"] for r in rows] == [0, 1] and all(1 <= r["takeover_step"] <= 31 for r in rows)
        saved = sorted((out / "round1" / "data").glob("episode_*.npz"))
        assert len(saved) == meta["summary"]["episodes"] == sum(r.get("expert_success", False) for r in rows) >= 1
        ep = np.load(saved[0])
        assert ep["action"].shape[1] == 14 and len(ep["action"]) == rows[0]["frames"]
        train = json.loads((out / "round1" / "policy" / "done.json").read_text())["command"]
        assert f"--data {out / 'data'} {out / 'round1' / 'data'} --out {out / 'round1' / 'policy'}" in train
        assert str(out / "round1" / "policy" / "ckpt.pt") in \
            json.loads((out / "eval_seed0" / "done.json").read_text())["command"]
        capsys.readouterr()
        assert recipe.main(argv) == 0
        assert capsys.readouterr().out.count("done already") == 5  # data, policy, takeovers, policy 1, evaluation
        # diagnostics true-positions on that policy: the simulator's positions read at each query of its second pass
        import world
        from lab import diagnostics
        calls, real = [], world.located
        monkeypatch.setattr(world, "located", lambda env: calls.append(env.t) or real(env))
        res = diagnostics.true_positions(str(out / "round1" / "policy" / "ckpt.pt"), "place_block", 1, max_steps=20)
        assert calls == [0, 10] and res["front_end"] == res["true_positions"] == 0
        assert res["per_episode"] == [{"seed": res["per_episode"][0]["seed"], "front_end": False, "true_positions": False}]
        calls.clear()  # in a batch, each row reads its own environment's positions
        monkeypatch.setattr(world, "located", lambda env: calls.append((id(env), env.t)) or real(env))
        res = diagnostics.true_positions(str(out / "round1" / "policy" / "ckpt.pt"), "place_block", 2, max_steps=20,
                                         batch=2)
        (a, _), (b, _) = calls[:2]
        assert a != b and calls == [(a, 0), (b, 0), (a, 10), (b, 10)] and len(res["per_episode"]) == 2
    finally:
        del recipe.RECIPES["_tiny_recovery"]


def test_bad_input_gets_one_line(tmp_path, capsys):  # a folder data.py did not make; a task without the expert
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "meta.json").write_text(json.dumps({"generation": {"task": "place_block"}}))
    assert dagger.main(["takeover", "--ckpt", str(tmp_path / "none.pt"), "--data", str(tmp_path / "t"),
                        "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("dagger.py: error: ")
    assert dagger.main(["experts", "--task", "handover"]) == 2
    assert "no closed-loop expert" in capsys.readouterr().err


def test_true_positions_on_the_twin_reads_its_backends_env(tmp_path, monkeypatch):
    """diagnostics true-positions on a twin task runs eval_real's loop (its front-end column is the recipe's
    evaluation), and the simulator's positions come from the environment that loop steps."""
    import world
    from lab import diagnostics, recipe
    out = tmp_path / "r"
    assert recipe.main(["franka_stack", "--out", str(out), "--demos", "1", "--steps", "1", "--episodes", "1",
                        "--workers", "1"]) == 0
    calls, real = [], world.located
    monkeypatch.setattr(world, "located", lambda env: calls.append((type(env).__name__, env.t)) or real(env))
    res = diagnostics.true_positions(str(out / "policy" / "ckpt.pt"), "franka_stack", 1, max_steps=20)
    assert calls == [("FrankaEnv", 0), ("FrankaEnv", 10)]
    evaluated = json.loads((out / "eval_seed0" / "results.json").read_text())["tasks"]["franka_stack"]["per_episode"]
    assert res["per_episode"][0]["seed"] == evaluated[0]["seed"]
