"""Evaluation: failure attribution on hand-made rollouts, Wilson intervals, compare (lab/diagnostics.py) and the paired test."""
import json

from pathlib import Path

import numpy as np
import pytest

import eval_sim
import stats
from lab import diagnostics
from world import experts, sim


def _rollout(task, seed, edit):
    """Run the expert with its actions edited by edit(t, action, env) -> action; return the env at the end."""
    env = sim.Env(task, render=False)
    env.reset(seed)
    acts = list(experts.Expert(env).actions())
    env.reset(seed)
    for t, a in enumerate(acts):
        env.step(edit(t, a.copy(), env))
    for _ in range(20):
        env.step(edit(len(acts), acts[-1].copy(), env))
    return env


def test_expert_success_never_close_motion_fail_drop_skill_fail():
    ok = _rollout("place_block", 0, lambda t, a, e: a)
    assert eval_sim.classify(ok.success, ok.stage, ok.stages) == "success"

    def never_close(t, a, e):
        a[sim.GRIPPER_INDICES] = 1.0
        return a
    env = _rollout("place_block", 0, never_close)
    assert eval_sim.classify(env.success, env.stage, env.stages) == "motion-fail"

    lift_end = {}

    def drop_after_lift(t, a, e):
        n = e.layout.roles["target"]
        if e.obj_pos(n)[2] > 0.06 and "t" not in lift_end:
            lift_end["t"] = t
        if "t" in lift_end:
            a[sim.GRIPPER_INDICES] = 1.0  # let go in mid-air
        return a
    env = _rollout("place_block", 0, drop_after_lift)
    assert "t" in lift_end
    assert eval_sim.classify(env.success, env.stage, env.stages) == "skill-fail"


def test_wilson_known_values():
    # reference values of the Wilson score interval (z = 1.96)
    for k, n, lo, hi in [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (8, 10, 0.4902, 0.9433), (95, 100, 0.8882, 0.9785)]:
        a, b = eval_sim.wilson(k, n)
        assert abs(a - lo) < 1e-3 and abs(b - hi) < 1e-3, (k, n, a, b)


def test_mcnemar_exact():
    assert stats.mcnemar_exact(0, 0) == 1.0
    assert abs(stats.mcnemar_exact(0, 6) - 2 / 64) < 1e-12
    assert abs(stats.mcnemar_exact(3, 3) - 1.0) < 1e-12
    assert stats.mcnemar_exact(1, 9) < 0.05 < stats.mcnemar_exact(2, 6)


def _fake_results(path, rates_by_task, seed_base=0):
    tasks = {}
    for task, outcomes in rates_by_task.items():
        eps = [{"seed": seed_base + i, "success": bool(o), "failure_type": "success" if o else "motion-fail",
                "failure_to_nearest_event": None if o else 3.0, "uniform_step_to_nearest_event": None if o else 9.0}
               for i, o in enumerate(outcomes)]
        tasks[task] = eval_sim.summarise(task, eps, 1.0)
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps({"tasks": tasks}))


def test_compare_table_paired_test_and_charts(tmp_path):
    base = {"lift_block": [1, 0] * 10, "stack_three": [0] * 20}
    var = {"lift_block": [1, 1] * 10, "stack_three": [1] + [0] * 19}
    _fake_results(tmp_path / "none", base)
    _fake_results(tmp_path / "stake", var)
    md = diagnostics.compare([str(tmp_path / "none"), str(tmp_path / "stake")], str(tmp_path / "rep"))
    assert "0.50 [0.30, 0.70] (10/20)" in md and "1.00 [0.84, 1.00] (20/20)" in md
    row = next(l for l in md.splitlines() if l.startswith("| lift_block | stake |"))
    assert "| 20 | 0 | 10 |" in row and "0.00195" in row and "+1.00" in row  # p = 2 / 2**10
    assert "inconclusive" in next(l for l in md.splitlines() if l.startswith("| stack_three | stake |"))
    for f in ("compare.md", "success.png", "gain_vs_events.png"):
        assert (tmp_path / "rep" / f).stat().st_size > 500


def test_eval_seeds_are_disjoint_from_demo_seeds():
    import data
    seeds = eval_sim.eval_seeds(0, 100) + eval_sim.eval_seeds(3, 100)
    assert min(seeds) >= sim.EVAL_SEED_OFFSET and len(set(seeds)) == 200
    with pytest.raises(data.DataError, match="below"):
        data.generate("lift_block", 1, "/tmp/never_written_x", seed=sim.EVAL_SEED_OFFSET, quiet=True)


class ReplayPolicy:
    """The Policy interface, replaying the expert's actions of the seeds it is told about (lock-step batch)."""

    def __init__(self, task, seeds, n_action_steps=5):
        self.cameras, self.image_size, self.n_action_steps, self.horizon = ["top"], (32, 32), n_action_steps, n_action_steps
        env = sim.Env(task, render=False)
        self.plans = []
        for s in seeds:
            env.reset(s)
            self.plans.append(np.stack(list(experts.Expert(env).actions())))
        self.calls = 0

    def predict_chunk(self, obs_batch):
        t = self.calls * self.n_action_steps
        self.calls += 1
        out = []
        for p in self.plans[:len(obs_batch)]:
            idx = np.minimum(np.arange(t, t + self.horizon), len(p) - 1)
            out.append(p[idx])
        return np.stack(out)


def test_rollout_batch_with_replayed_expert_succeeds_and_reports():
    seeds = eval_sim.eval_seeds(0, 2)
    pol = ReplayPolicy("lift_block", seeds)
    cfg = eval_sim.EvalConfig(ckpt="x", task=["lift_block"], episodes=2)
    eps = eval_sim.rollout_batch(pol, "lift_block", seeds, cfg, record_video=1)
    assert all(e["success"] for e in eps)
    assert all(len(e["gripper_events"]) == 1 for e in eps), "the policy's own close event is found"
    assert eps[0]["video_frames"] and eps[1]["video_frames"] is None
    blind = eval_sim.rollout_batch(ReplayPolicy("lift_block", seeds[::-1]), "lift_block", seeds, cfg)
    assert sum(e["success"] for e in blind) <= 1, "another seed's actions should not solve this seed"
    # where the closes land: the expert's on its block, another seed's plan beside it
    assert all(len(e["closes"]) == 1 and e["closes"][0]["xy_cm"] < 1.5 for e in eps), [e["closes"] for e in eps]
    q = eval_sim.first_close_quartiles(eps + blind)
    assert q["first_close_xy_cm_success"][2] < 1.5 and q["first_close_xy_cm_failure"][0] > 3, q


def test_own_instruction_reaches_the_policy_and_the_record():
    """--instruction: every episode's observation carries the user's words; results keep the layout's too."""
    seeds, seen = eval_sim.eval_seeds(0, 2), []
    pol = ReplayPolicy("lift_block", seeds)
    real = pol.predict_chunk
    pol.predict_chunk = lambda obs: (seen.extend(o["instruction"] for o in obs), real(obs))[1]
    cfg = eval_sim.EvalConfig(ckpt="x", task=["lift_block"], episodes=2, instruction="grab that cube over there")
    results = {"tasks": {}}
    eval_sim._evaluate_task(cfg, "lift_block", pol, None, Path("/nonexistent"), results)  # no pool, no videos
    eps = results["tasks"]["lift_block"]["per_episode"]
    assert set(seen) == {"grab that cube over there"}
    assert all(e["instruction"] == "grab that cube over there" and e["true_instruction"] != e["instruction"] for e in eps)
    with pytest.raises(ValueError, match="give one"):
        eval_sim.EvalConfig(ckpt="x", instruction="x", shuffle_instructions=True)
    # {fields} name each layout's own objects, as the task's phrasings do
    seeds = eval_sim.eval_seeds(0, 20)
    own = eval_sim.own_words("grab the {color} cube", "lift_block", seeds)
    true = [sim.TASKS["lift_block"].layout(s).instruction for s in seeds]
    assert all(o.split()[2] in t.split() for o, t in zip(own, true)) and len(set(own)) > 1
    assert eval_sim.own_words("{c0} first, then {c1}", "stack_two", seeds[:1])[0].count(" ") == 3
    with pytest.raises(ValueError, match=r"lift_block's layouts fill \{color\}"):
        eval_sim.own_words("grab the {colour} cube", "lift_block", seeds)


def test_shuffled_instructions_ask_for_another_target():
    """--shuffle-instructions: every episode's instruction is another episode's, naming another target (a plain
    derangement of episodes repeats the request by chance), and the draw is seeded."""
    seeds = eval_sim.eval_seeds(0, 40)
    layouts = [sim.TASKS["lift_block"].layout(s) for s in seeds]
    ins = eval_sim.shuffled_instructions("lift_block", seeds, 0)
    assert len(ins) == 40 and ins == eval_sim.shuffled_instructions("lift_block", seeds, 0)
    assert ins != eval_sim.shuffled_instructions("lift_block", seeds, 1)
    for lay, s in zip(layouts, ins):
        donors = [d for d in layouts if d.instruction == s]
        assert donors and all(d.roles != lay.roles for d in donors), (lay.instruction, s)


def test_n_action_steps_override_sets_the_requery_interval():
    class Counting:  # holds the arms where they start; counts chunk requests
        cameras, image_size, n_action_steps, horizon, calls = ["top"], (32, 32), 10, 10, 0

        def predict_chunk(self, obs_batch):
            self.calls += 1
            return np.stack([np.tile(o["qpos"], (self.horizon, 1)) for o in obs_batch])

    seeds = eval_sim.eval_seeds(0, 1)
    for override, calls in ((0, 2), (4, 5), (50, 2)):  # 0: the policy's own 10; above the horizon: clipped to it
        pol = Counting()
        cfg = eval_sim.EvalConfig(ckpt="x", task=["lift_block"], episodes=1, max_steps=20, n_action_steps=override)
        eval_sim.rollout_batch(pol, "lift_block", seeds, cfg)
        assert pol.calls == calls, (override, pol.calls)
    with pytest.raises(ValueError, match="--noise-scale 1.5"):
        eval_sim.EvalConfig(ckpt="x", task=["lift_block"], noise_scale=1.5)


class LookingPolicy(ReplayPolicy):
    """The expert's plan, nudged by what the top camera shows: a rollout fed other frames goes elsewhere."""

    def predict_chunk(self, obs_batch):
        out = super().predict_chunk(obs_batch)
        look = np.array([o["images"]["top"].astype(np.float32).mean() / 255.0 for o in obs_batch])  # (B,) in [0, 1]
        out[:, :, 0] += 0.05 * look[:, None]  # the left waist turns with the image
        return out


def test_rendering_only_read_steps_keeps_the_outcomes(monkeypatch):
    """The cameras render only at query steps (and every step of a recorded episode); every outcome is what it
    is when they render at every step, for a policy whose actions depend on the pixels it reads."""
    seeds = eval_sim.eval_seeds(0, 3)
    cfg = eval_sim.EvalConfig(ckpt="x", task=["lift_block"], episodes=3)
    calls = []
    real = sim.Env.render
    monkeypatch.setattr(sim.Env, "render", lambda self, cam: calls.append(cam) or real(self, cam))
    run = lambda every, video=0: eval_sim.rollout_batch(LookingPolicy("lift_block", seeds), "lift_block", seeds, cfg,
                                                        record_video=video, render_every_step=every)
    keys = ("success", "length", "gripper_events", "stages_reached", "failure_step")
    full = run(True)
    n_full, calls[:] = len(calls), []
    lazy = run(False)
    assert [[e[k] for k in keys] for e in full] == [[e[k] for k in keys] for e in lazy]
    assert len(calls) < 0.3 * n_full, (len(calls), n_full)  # 1 step in 5 renders (n_action_steps 5), plus resets
    video = run(False, video=1)
    assert len(video[0]["video_frames"]) == video[0]["length"]  # a recorded episode still has every frame
