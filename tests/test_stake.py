"""StaKe supervision end to end: the stage labels and keyframe targets that reach a batch (episode folder ->
dataset.load_folders -> dataset.make_batch), checked against gripper events placed by hand, and how
train.train_step composes the flow loss with the stage BCE and the keyframe L1.

Conventions checked (segment.py): stage 1 = gripper closed = skill, per arm; an event's step is the first step
of the new state; a step's keyframe is the first event of ANY arm strictly after it (the last step of the
episode when none is left), and its target is the normalised action at that step.
"""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import data  # noqa: E402
import dataset  # noqa: E402
import segment  # noqa: E402
import train  # noqa: E402
from model import VLA, ModelConfig, Normalizer, Tokenizer, train_tokenizer  # noqa: E402

torch.set_num_threads(1)  # 2 shared cores

GRIPPERS = (1, 3)  # action/qpos layout: [time code, gripper arm 0, episode code, gripper arm 1]
# per episode: its length and, per arm, (close step, open step); None = never closes / never reopens
EPISODES = [
    dict(T=40, arms=[(8, 20), (14, 27)]),      # four events at four steps; after 27 the keyframe is step 39
    dict(T=36, arms=[(10, 22), (10, None)]),   # both arms close at one step; arm 1 stays closed to the end
    dict(T=30, arms=[(5, 17), (None, None)]),  # arm 1 never moves
]
IMAGE_SIZE = (16, 16)


def episode_arrays(e: int, spec: dict):
    """(action, qpos) of episode e. Grippers command 1 = open, 0 = closed. qpos[:, 0] is the step and qpos[:, 2]
    the episode, so a batch's state tells which step was drawn; the non-gripper actions change every step, so a
    keyframe target one step off differs in them."""
    T = spec["T"]
    t = np.arange(T, dtype=np.float32)
    action = np.stack([0.05 * t + e, np.ones(T), np.cos(0.3 * t) - 0.5 * e, np.ones(T)], 1).astype(np.float32)
    for arm, (close, open_) in enumerate(spec["arms"]):
        if close is not None:
            action[close:open_, GRIPPERS[arm]] = 0.0
    qpos = np.stack([t, action[:, 1], np.full(T, e), action[:, 3]], 1).astype(np.float32)
    return action, qpos


def truth(spec: dict, t: int):
    """(stage per arm, keyframe step) at step t, from the hand-placed events alone (not from segment.py)."""
    T = spec["T"]
    stage = [float(c is not None and c <= t < (T if o is None else o)) for c, o in spec["arms"]]
    events = sorted({s for arm in spec["arms"] for s in arm if s is not None})
    return stage, next((s for s in events if s > t), T - 1)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("stake") / "events"
    root.mkdir()
    names = ["j_time", "gripper_l", "j_episode", "gripper_r"]
    data.save_meta(root, dict(fps=20, action_names=names, qpos_names=names, gripper_indices=list(GRIPPERS),
                              gripper_convention="1 = open, 0 = closed", arms=["left", "right"], cameras=["top"],
                              image_size=list(IMAGE_SIZE), tasks={"events": {"gripper_events": 4}}))
    rng = np.random.default_rng(0)
    for e, spec in enumerate(EPISODES):
        action, qpos = episode_arrays(e, spec)
        images = {"top": rng.integers(0, 256, (spec["T"], *IMAGE_SIZE, 3), dtype=np.uint8)}
        data.save_episode(root / f"episode_{e:06d}.npz", dict(images=images, qpos=qpos, action=action,
                                                               instruction="pick it up", task="events", seed=e))
    return str(root)


@pytest.fixture(scope="module")
def setup(folder):
    """The loaded data, its normaliser and stats, a tiny model config with both StaKe heads, the language."""
    D = dataset.load_folders([folder])
    stats = dataset.compute_stats(D)
    tok = Tokenizer(train_tokenizer(sorted(set(D["texts"])), 64))
    cfg = ModelConfig(action_dim=4, state_dim=4, n_cameras=1, image_size=IMAGE_SIZE, patch_size=8, vit_width=32,
                      vit_depth=1, vit_heads=2, width=32, depth=1, heads=2, expert_width=32, horizon=4,
                      n_action_steps=2, lang_len=8, vocab_size=tok.vocab_size, n_stage=D["stage"].shape[1],
                      keyframe_head=True)
    return dict(D=D, stats=stats, norm=Normalizer(stats), cfg=cfg, lang=train.language(tok, D["texts"], cfg.lang_len))


@pytest.fixture(scope="module")
def drawn(setup):
    """Every sample of 16 batches of 64 as (episode, step, stage row, keyframe row), the step recovered from the
    batch's state. Asserts that every step of every episode was drawn, so the steps on either side of each event
    (where a one-step shift shows) are all checked."""
    s, g = setup, torch.Generator().manual_seed(0)
    q_mean, q_std = torch.tensor(s["stats"]["qpos_mean"]), torch.tensor(s["stats"]["qpos_std"])
    rows = []
    for _ in range(16):
        b = dataset.make_batch(s["D"], s["lang"], s["norm"], g, 64, s["cfg"], 0, "cpu")
        qpos = (b["state"] * q_std + q_mean).round().long()                        # (B, 4) raw codes
        rows += [(int(q[2]), int(q[0]), st, kf) for q, st, kf in zip(qpos, b["stage"], b["keyframe"])]
    seen = {(e, t) for e, t, _, _ in rows}
    missing = [(e, t) for e, spec in enumerate(EPISODES) for t in range(spec["T"]) if (e, t) not in seen]
    assert not missing, f"steps never drawn (draw more batches): {missing}"
    return rows


def test_known_events_are_found(folder):
    """The fixture's premise: segment.py finds exactly the hand-placed events, at the first step of each new
    state (so `truth` describes the same labels the code means)."""
    for e, spec in enumerate(EPISODES):
        action, _ = episode_arrays(e, spec)
        seg = segment.segment(action[:, list(GRIPPERS)], levels=(0.0, 1.0))
        want = sorted((s, arm, kind) for arm, (c, o) in enumerate(spec["arms"])
                      for s, kind in ((c, "close"), (o, "open")) if s is not None)
        assert seg.events == want, f"episode {e}"


def test_batch_stage_labels_match_gripper_events(drawn):
    """Batch stage == 1 exactly where that arm's gripper is closed at the drawn step, per arm. Guards against the
    labels being taken one step off in the batch (make_batch's stage at t + 1) or anywhere on the way."""
    bad = []
    for e, t, stage, _ in drawn:
        want, _ = truth(EPISODES[e], t)
        if stage.tolist() != want:
            bad.append((e, t, tuple(stage.tolist()), tuple(want)))
    assert not bad, f"{len(bad)} samples with wrong stage labels; (episode, step, got, want): {sorted(set(bad))[:12]}"


def test_batch_keyframe_targets_are_next_event_actions(drawn, setup):
    """Batch keyframe == the normalised action at the first event (any arm) strictly after the drawn step, or
    at the episode's last step after the last event. Guards against the target taken at t + 1 in the batch, and
    against the keyframe index moved by one step (before or after the event) in segment.py."""
    actions = [torch.from_numpy(episode_arrays(e, spec)[0]) for e, spec in enumerate(EPISODES)]
    bad = []
    for e, t, _, keyframe in drawn:
        _, k = truth(EPISODES[e], t)
        want = setup["norm"].action(actions[e][k])
        if not torch.allclose(keyframe, want, atol=1e-5):
            bad.append((e, t, k))
    assert not bad, f"{len(bad)} samples whose keyframe target is not the action at step k; (episode, step, k): " \
                    f"{sorted(set(bad))[:12]}"


def test_train_step_loss_is_weighted_sum_of_policy_stage_keyframe(setup):
    """train_step's loss == policy_loss + stage_weight * stage_loss + keyframe_weight * keyframe_l1, each weight
    moving the loss by exactly its term, and stage_loss == BCE-with-logits of out['stage_logits'] against the
    batch's stage labels (1 = closed). Guards against a term left out of the total (or weighted wrongly) and
    against labels inverted inside the model's BCE. SGD with lr 0 keeps the weights fixed between calls."""
    s = setup
    torch.manual_seed(0)
    model = VLA(s["cfg"], seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    batch = dataset.make_batch(s["D"], s["lang"], s["norm"], torch.Generator().manual_seed(1), 16, s["cfg"], 0, "cpu")
    noise, t = train.sample_noise_time(torch.Generator().manual_seed(2), 16, s["cfg"].horizon, 4, "cpu")
    labels = batch["stage"].float()
    assert 0 < labels.mean() < 1, "the batch needs both open and closed labels"

    def step(ws, wk, b=batch):
        out, loss, _ = train.train_step(model, opt, b, noise, t, train.Options(data=["unused"], stage_weight=ws,
                                                                              keyframe_weight=wk), False)
        return {k: v.detach().double() for k, v in out.items()}, loss.detach().double()

    close = lambda a, b: torch.testing.assert_close(a, b, rtol=0, atol=1e-5)  # float32 rounding
    out, loss = step(0.3, 0.7)
    p, st, kf = out["policy_loss"], out["stage_loss"], out["keyframe_l1"]
    assert st > 0 and kf > 0
    close(st, F.binary_cross_entropy_with_logits(out["stage_logits"], labels.double()))
    close(loss, p + 0.3 * st + 0.7 * kf)
    close(step(0.0, 0.0)[1], p)                       # no StaKe weight: the flow loss alone
    close(step(1.3, 0.7)[1] - loss, 1.0 * st)         # the stage weight adds exactly its term
    close(step(0.3, 2.7)[1] - loss, 2.0 * kf)         # the keyframe weight too
    # the BCE reads the labels as given: inverting them in the batch changes the stage loss to BCE vs 1 - y
    out_inv, loss_inv = step(0.3, 0.7, {**batch, "stage": 1 - batch["stage"]})
    close(out_inv["stage_loss"], F.binary_cross_entropy_with_logits(out["stage_logits"], 1 - labels.double()))
    assert abs(float(out_inv["stage_loss"] - st)) > 1e-3, "labels too balanced to tell inverted ones apart"
    close(loss_inv - loss, 0.3 * (out_inv["stage_loss"] - st))
    close(step(0.3, 0.7)[1], loss)                    # the weights did not move: every call saw one model
