"""model.py: the flow-matching expert, the StaKe heads' wiring, and the variants' shared initialisation."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model import VLA, ModelConfig, Tokenizer, train_tokenizer  # noqa: E402
from train import param_counts  # noqa: E402
from train import new_model, sample_noise_time  # noqa: E402

torch.set_num_threads(1)  # 2 shared cores: two threads on tiny ops mostly wait for each other

TINY = dict(patch_size=16, vit_width=32, vit_depth=1, vit_heads=2, width=32, depth=2, heads=2, expert_width=32,
            horizon=4, n_action_steps=2, lang_len=4, vocab_size=8)


def tiny_cfg(**kw):
    return ModelConfig(**{**TINY, "action_dim": 6, "state_dim": 6, "n_cameras": 1, "image_size": (32, 32), **kw})


def fake_batch(cfg, B=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(images=torch.rand(B, cfg.n_cameras, 3, *cfg.image_size, generator=g) * 2 - 1,
                lang_ids=torch.randint(0, cfg.vocab_size, (B, cfg.lang_len), generator=g),
                lang_mask=torch.tensor([[True] * (cfg.lang_len - 1) + [False]] * B),
                state=torch.randn(B, cfg.state_dim, generator=g),
                actions=torch.randn(B, cfg.horizon, cfg.action_dim, generator=g),
                action_valid=torch.ones(B, cfg.horizon, dtype=torch.bool),
                stage=(torch.rand(B, max(cfg.n_stage, 1), generator=g) > 0.5).float(),
                keyframe=torch.randn(B, cfg.action_dim, generator=g))


def test_flow_matching_learns_bimodal_conditional():
    """Toy, no images: given c = 0 the chunk is all +1 or all -1 (50/50); given c = 1 it is all +2 (80 %)
    or all -1 (20 %). Samples must land on the modes in those proportions, whole chunks in one mode, and
    not at the conditional mean (0 and 1.4), where a regression head would put them."""
    cfg = ModelConfig(**{**TINY, "action_dim": 1, "state_dim": 1, "n_cameras": 0, "lang_len": 1, "vocab_size": 2})
    torch.manual_seed(0)
    model = VLA(cfg, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    B, H, steps = 64, cfg.horizon, 1000
    lang = dict(lang_ids=torch.zeros(B, 1, dtype=torch.long), lang_mask=torch.ones(B, 1, dtype=torch.bool))

    def draw(c):
        u = torch.rand(len(c), generator=g)
        mode = torch.where(c == 0, torch.where(u < 0.5, 1.0, -1.0), torch.where(u < 0.8, 2.0, -1.0))
        return mode[:, None, None] + 0.05 * torch.randn(len(c), H, 1, generator=g)

    for step in range(steps):
        opt.param_groups[0]["lr"] = 3e-3 * 0.5 * (1 + np.cos(np.pi * step / steps))
        c = (torch.rand(B, generator=g) < 0.5).float()
        batch = dict(images=None, state=c[:, None], actions=draw(c), action_valid=torch.ones(B, H, dtype=torch.bool), **lang)
        noise, t = sample_noise_time(g, B, H, 1, "cpu")
        loss = model(batch, noise, t)["policy_loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    n = 1000
    for c, hi, p_hi, mean in ((0.0, 1.0, 0.5, 0.0), (1.0, 2.0, 0.8, 1.4)):
        x = model.sample(None, lang["lang_ids"][:1].expand(n, 1), lang["lang_mask"][:1].expand(n, 1),
                         torch.full((n, 1), c), torch.randn(n, H, 1, generator=g))[..., 0]   # (n, H)
        on_hi, on_lo = (x - hi).abs() < 0.3, (x + 1).abs() < 0.3
        assert (on_hi | on_lo).float().mean() > 0.9, f"c={c}: samples off the modes"
        assert ((on_hi.all(1)) | (on_lo.all(1))).float().mean() > 0.85, f"c={c}: chunks mix modes"
        frac = on_hi.all(1).float().sum() / (on_hi.all(1) | on_lo.all(1)).float().sum()
        assert abs(float(frac) - p_hi) < 0.08, f"c={c}: mode {hi} gets {float(frac):.2f}, expected {p_hi}"
        assert ((x - mean).abs() < 0.3).float().mean() < 0.05, f"c={c}: samples collapse to the mean"


def test_stake_losses_reach_shared_weights():
    torch.manual_seed(0)
    cfg = tiny_cfg(n_stage=2, keyframe_head=True)
    for loss_name in ("stage_loss", "keyframe_l1"):
        model = VLA(cfg, seed=0)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        out = model(fake_batch(cfg), torch.randn(4, cfg.horizon, cfg.action_dim), torch.rand(4))
        out[loss_name].backward()
        query = model.stage_query if loss_name == "stage_loss" else model.keyframe_query
        assert query.grad is not None and query.grad.abs().sum() > 0, "query token is detached"
        assert model.expert[0].qkv.weight.grad is None, "the action expert should get no StaKe gradient"
        opt.step()
        after = model.state_dict()
        for name in ("vit.patch_embed.proj.weight", "vit.blocks.0.attn.qkv.weight", "blocks.0.qkv.weight",
                     "blocks.1.mlp.0.weight", "lang_emb.weight", "state_proj.weight"):
            assert not torch.equal(before[name], after[name]), f"{loss_name} did not change {name}"


@pytest.mark.parametrize("state_in", ["prefix", "expert"])
def test_actions_independent_of_stake_queries(state_in):
    """Same weights, same noise: the StaKe model and the same weights without heads give identical
    velocities and sampled chunks (after some training, so the queries are not at their init)."""
    torch.manual_seed(0)
    cfg = tiny_cfg(n_stage=2, keyframe_head=True, state_in=state_in)
    stake = VLA(cfg, seed=0)
    opt = torch.optim.AdamW(stake.parameters(), lr=1e-2)
    for i in range(3):
        out = stake(fake_batch(cfg, seed=i), torch.randn(4, cfg.horizon, 6), torch.rand(4))
        (out["policy_loss"] + out["stage_loss"] + out["keyframe_l1"]).backward()
        opt.step(), opt.zero_grad()
    plain = VLA(tiny_cfg(state_in=state_in), seed=0)
    missing, unexpected = plain.load_state_dict(stake.state_dict(), strict=False)
    assert not missing and unexpected and all(k.startswith(("stage_", "keyframe_")) for k in unexpected)
    batch, noise, t = fake_batch(cfg, seed=9), torch.randn(4, cfg.horizon, 6), torch.rand(4)
    a, b = stake(batch, noise, t), plain(batch, noise, t)
    assert "stage_loss" in a and "stage_loss" not in b
    assert torch.equal(a["policy_loss"], b["policy_loss"])
    args = (batch["images"], batch["lang_ids"], batch["lang_mask"], batch["state"], noise)
    x_stake, x_plain = stake.sample(*args), plain.sample(*args)
    torch.testing.assert_close(x_stake, x_plain, rtol=0, atol=1e-6)
    assert not torch.allclose(x_stake, noise)  # the sampler did something


def test_state_in_expert_hides_the_state_from_the_stake_heads():
    """state_in="expert" (pi0): another state leaves the StaKe heads' outputs bit-identical and changes the
    actions; in the prefix (the default, and what a checkpoint without the field gets) it changes both."""
    assert ModelConfig.from_dict({k: v for k, v in vars(tiny_cfg()).items() if k != "state_in"}).state_in == "prefix"
    for state_in, heads_see_it in (("expert", False), ("prefix", True)):
        torch.manual_seed(0)
        model = VLA(tiny_cfg(n_stage=2, keyframe_head=True, state_in=state_in), seed=0).eval()
        b1 = fake_batch(model.cfg, seed=1)
        b2 = {**b1, "state": b1["state"] + 1.0}
        noise = torch.randn(4, model.cfg.horizon, 6, generator=torch.Generator().manual_seed(2))
        heads, chunks = [], []
        for b in (b1, b2):
            cache, valid = model.encode_prefix(b["images"], b["lang_ids"], b["lang_mask"], b["state"])
            heads.append(model.stake(cache, valid))
            chunks.append(model.sample(b["images"], b["lang_ids"], b["lang_mask"], b["state"], noise))
        for n in ("stage", "keyframe"):
            assert torch.equal(heads[0][n], heads[1][n]) != heads_see_it, f"{state_in}: {n} head"
        assert not torch.allclose(chunks[0], chunks[1]), f"{state_in}: the actions ignore the state"


def test_sample_and_forward_share_the_suffix_layout():
    """One Euler step from t = 1 gives noise - v; forward at t = 1 on that chunk as the actions has target
    u = noise - actions = v, so its policy loss is 0 only if both passes build the same suffix (state token,
    mask) from the same state."""
    for state_in in ("expert", "prefix"):
        torch.manual_seed(0)
        model = VLA(tiny_cfg(state_in=state_in, num_steps=1), seed=0).eval()
        b = fake_batch(model.cfg, seed=3)
        noise = torch.randn(4, model.cfg.horizon, 6, generator=torch.Generator().manual_seed(4))
        x = model.sample(b["images"], b["lang_ids"], b["lang_mask"], b["state"], noise)
        with torch.no_grad():
            loss = model({**b, "actions": x}, noise, torch.ones(4))["policy_loss"]
        assert float(loss) < 1e-10, f"{state_in}: forward and sample disagree ({float(loss):.3g})"


def test_base_weights_identical_across_variants():
    models = {(s, k): new_model(tiny_cfg(n_stage=2 * s, keyframe_head=bool(k)), seed=3) for s in (0, 1) for k in (0, 1)}
    base = models[(0, 0)].state_dict()
    for (s, k), m in models.items():
        sd = m.state_dict()
        assert ("stage_query" in sd) == bool(s) and ("keyframe_query" in sd) == bool(k)
        assert {n for n in sd if not n.startswith(("stage_", "keyframe_"))} == set(base)
        for n, v in base.items():
            assert torch.equal(v, sd[n]), f"variant {(s, k)} differs in {n}"
    counts = [param_counts(m)["total"] for m in models.values()]
    assert len(set(counts)) == 4, "a head with weight 0 must not exist"
    other = new_model(tiny_cfg(), seed=4).state_dict()
    assert not torch.equal(other["blocks.0.qkv.weight"], base["blocks.0.qkv.weight"])


def test_config_validation():
    with pytest.raises(ValueError, match="divisible by patch_size"):
        tiny_cfg(image_size=(30, 32))
    with pytest.raises(ValueError, match="n_action_steps"):
        tiny_cfg(n_action_steps=9)
    with pytest.raises(ValueError, match="unknown preset"):
        ModelConfig.from_preset("huge", action_dim=1, state_dim=1, n_cameras=0)


def test_tokenizer_byte_fallback():
    proto = train_tokenizer(["pick up the red block", "hand the rod to the right arm"], vocab_size=300)
    tok = Tokenizer(proto)
    assert Tokenizer(tok.proto).ids("Pick up the Red block") == tok.ids("pick up the red block")  # case folded
    text = "grasp the zebra \u00fcber-fast \u6a5f"  # words and characters never seen
    ids = tok.ids(text)
    assert 1 not in ids, "unknown-token id used: byte fallback is off"
    assert tok.sp.decode(ids) == text.lower()
    ids2, mask = tok(["pick", text], 8)
    assert ids2.shape == (2, 8) and mask[1].all() and not mask[0].all() and (ids2[~mask] == 0).all()


def test_no_state_model_ignores_the_state():
    """use_state=False: no state token and no state weights, so the state cannot change the outputs (with the
    state it does, which is what makes the check able to fail)."""
    outs = {}
    for use_state in (True, False):
        cfg = tiny_cfg(use_state=use_state, n_stage=1, keyframe_head=True)
        model = new_model(cfg, 0).eval()
        assert hasattr(model, "state_proj") == use_state
        b1, b2 = fake_batch(cfg, seed=0), fake_batch(cfg, seed=0)
        b2["state"] = b2["state"] + 3.0
        noise, t = sample_noise_time(torch.Generator().manual_seed(1), 4, cfg.horizon, cfg.action_dim, "cpu")
        with torch.no_grad():
            o1, o2 = model(b1, noise, t), model(b2, noise, t)
        outs[use_state] = max((o1[k] - o2[k]).abs().max().item() for k in ("policy_loss", "stage_logits"))
    assert outs[True] > 1e-4 and outs[False] == 0.0


def test_conv_stem_keeps_the_token_grid_and_sees_the_image():
    """vit_stem='conv' replaces timm's patchify conv: same number of tokens per camera for patch 16 and 12
    (12 = 2 * 2 * 3 ends in a stride-3 conv), and the tokens depend on the pixels."""
    from frontend import conv_stem
    for patch, size in ((16, 96), (12, 96), (8, 32)):
        assert conv_stem(patch, 24)(torch.zeros(1, 3, size, size)).shape == (1, 24, size // patch, size // patch)
    cfg = tiny_cfg(vit_stem="conv")
    model = new_model(cfg, 0).eval()
    assert any(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3) for m in model.vit.patch_embed.proj.modules())
    b1, b2 = fake_batch(cfg, seed=0), fake_batch(cfg, seed=0)
    b2["images"] = -b2["images"]
    with torch.no_grad():
        c1, _ = model.encode_prefix(b1["images"], b1["lang_ids"], b1["lang_mask"], b1["state"])
        c2, _ = model.encode_prefix(b2["images"], b2["lang_ids"], b2["lang_mask"], b2["state"])
    assert (c1[0][0] - c2[0][0]).abs().max() > 1e-4
    with pytest.raises(ValueError, match="vit_stem"):
        tiny_cfg(vit_stem="resnet")


def test_keypoints_are_the_expected_position_of_what_the_vit_marks():
    """keypoints=K: each camera enters the prefix as K tokens built from softmax-weighted (x, y) over the patch
    grid. A keypoint whose logit is a bright-patch detector lands on that patch, at the grid's corner
    coordinates; the prefix has K tokens per camera; the coordinates also reach the action tokens directly, and
    the instruction changes where the keypoints land; vit_pos='sincos' fixes the ViT's positions (no grad)."""
    cfg = tiny_cfg(keypoints=3, vit_pos="sincos", n_cameras=2)
    model = new_model(cfg, 0).eval()
    assert not model.vit.pos_embed.requires_grad and not hasattr(model, "img_proj")
    batch = fake_batch(cfg, B=1)
    cache, valid = model.encode_prefix(batch["images"], batch["lang_ids"], batch["lang_mask"], batch["state"])
    assert valid.shape[1] == 2 * 3 + cfg.lang_len + 1  # 2 cameras x 3 keypoints, language, state
    # the keypoint coordinates themselves: a logit that is huge on one patch's features puts the keypoint there
    captured = {}
    model.kp_proj.register_forward_hook(lambda m, inp, out: captured.update(xy=inp[0]))
    for corner, patch in (((-1.0, -1.0), 0), ((1.0, 1.0), 3)):
        with torch.no_grad():
            feats = model.vit.forward_features(batch["images"][:, 0])        # (1, 4, Wv)
            model.kp_logits.weight.copy_(torch.zeros_like(model.kp_logits.weight))
            model.kp_logits.bias.zero_()
            model.kp_lang.weight.zero_(), model.kp_lang.bias.zero_()  # no instruction-dependent part here
            model.kp_logits.weight[0] = 1e3 * (feats[0, patch] - feats[0].mean(0))  # keypoint 0 detects `patch`
            model.encode_prefix(batch["images"], batch["lang_ids"], batch["lang_mask"], batch["state"])
        xy = captured["xy"][:, 0]                                            # (B, C, K, 2) -> camera 0
        assert torch.allclose(xy[0, 0], torch.tensor(corner), atol=1e-3), (corner, xy[0, 0])
        assert torch.allclose(xy[0, 1], torch.zeros(2), atol=1e-5)           # flat logits: the grid's centre
    # the coordinates reach the action tokens directly (kp_direct), and the instruction moves the keypoints
    cache, valid = model.encode_prefix(batch["images"], batch["lang_ids"], batch["lang_mask"], batch["state"])
    assert len(cache) == cfg.depth + 1 and cache[-1].shape == (1, 2 * 3 * 2)
    x_t, t = torch.randn(1, cfg.horizon, cfg.action_dim), torch.full((1,), 0.5)
    with torch.no_grad():
        v1 = model.velocity(cache, valid, x_t, t)
        v2 = model.velocity(cache[:-1] + [cache[-1] + 0.5], valid, x_t, t)
    assert (v1 - v2).abs().max() > 1e-4
    model = new_model(cfg, 0).eval()
    other = dict(batch, lang_ids=(batch["lang_ids"] + 1) % cfg.vocab_size)
    with torch.no_grad():
        k1 = model.encode_prefix(batch["images"], batch["lang_ids"], batch["lang_mask"], batch["state"])[0][-1]
        k2 = model.encode_prefix(other["images"], other["lang_ids"], other["lang_mask"], other["state"])[0][-1]
    assert (k1 - k2).abs().max() > 1e-6
    with pytest.raises(ValueError, match="vit_pos"):
        tiny_cfg(vit_pos="rope")


def test_word_order_reaches_the_keypoints_only_with_kp_word_order():
    """A mean of word + position embeddings is a bag of words: two instructions with the same tokens in
    another order shift the keypoints alike. With kp_word_order one attention layer reads the order first."""
    for order in (False, True):
        cfg = tiny_cfg(keypoints=3, vit_pos="sincos", kp_word_order=order)
        model = new_model(cfg, 0).eval()
        with torch.no_grad():  # make the language matter: larger embeddings and language weights
            model.lang_emb.weight.mul_(50), model.kp_lang.weight.mul_(50)
        b = fake_batch(cfg, B=1)
        ids = torch.tensor([[1, 2, 3, 0]])
        swapped = torch.tensor([[3, 2, 1, 0]])
        mask = torch.tensor([[True, True, True, False]])
        with torch.no_grad():
            a = model.encode_keypoints(b["images"], model.embed_instruction(ids), mask)
            c = model.encode_keypoints(b["images"], model.embed_instruction(swapped), mask)
        assert torch.allclose(a, c, atol=1e-6) != order, f"kp_word_order={order}"
    assert "kp_text.qkv.weight" in model.state_dict()


def test_object_distances_join_the_grounded_positions():
    """ground_distances: the R(R-1)/2 distances between the grounded points, in 10 cm, same under a half turn
    (train.py --symmetry); the prefix reads them (moving one point changes the cache only through them too)."""
    with pytest.raises(ValueError, match="ground_distances needs grounded"):
        tiny_cfg(ground_distances=True)
    cfg = tiny_cfg(keypoints=3, grounded=6, grounded_only=True, ground_distances=True,
                   ground_mean=(0.1, 0.0) * 3, ground_std=(0.2, 0.1) * 3)
    model = new_model(cfg, 0).eval()
    world = torch.tensor([[0.0, 0.0, 0.3, 0.4, 0.0, 0.1]])                   # (1, 2R) metres: 3 points
    pos = (world - torch.tensor(cfg.ground_mean)) / torch.tensor(cfg.ground_std)
    d = model.object_distances(pos)
    assert torch.allclose(d, torch.tensor([[5.0, 1.0, 0.18 ** 0.5 * 10]]), atol=1e-5)
    turned = (-world - torch.tensor(cfg.ground_mean)) / torch.tensor(cfg.ground_std)
    assert torch.allclose(model.object_distances(turned), d, atol=1e-5)
    assert model.ground_proj.in_features == 6 + 3 and model.kp_direct.in_features == 6 + 3
    b = fake_batch(cfg, B=1)
    with torch.no_grad():
        cache, _ = model.encode_prefix(b["images"], b["lang_ids"], b["lang_mask"], b["state"], ground=pos)
    assert torch.allclose(cache[-1], torch.cat([pos, d], 1))                 # kp_direct's input


def test_object_tokens_are_read_by_attention_alone():
    """object_tokens: one prefix token per grounded object and no kp_direct; the actions still depend on
    where each object is, and on which role sits where (the role embeddings)."""
    with pytest.raises(ValueError, match="object_tokens needs grounded_only"):
        tiny_cfg(keypoints=3, grounded=4, object_tokens=True)
    cfg = tiny_cfg(keypoints=3, grounded=4, grounded_only=True, object_tokens=True,
                   ground_mean=(0.0, 0.0) * 2, ground_std=(0.1, 0.1) * 2)
    model = new_model(cfg, 0).eval()
    assert not hasattr(model, "kp_direct") and model.obj_role.shape == (2, cfg.width)
    b = fake_batch(cfg, B=1)
    x_t, t = torch.randn(1, cfg.horizon, cfg.action_dim, generator=torch.Generator().manual_seed(1)), torch.tensor([0.5])

    def velocity(pos):
        with torch.no_grad():
            cache, valid = model.encode_prefix(None, b["lang_ids"], b["lang_mask"], b["state"], ground=pos)
            assert len(cache) == cfg.depth and valid.shape[1] == 2 + cfg.lang_len + 1  # R objects, words, state
            return model.velocity(cache, valid, x_t, t)

    pos = torch.tensor([[0.5, -1.0, -0.3, 0.8]])
    v = velocity(pos)
    assert not torch.allclose(v, velocity(pos + torch.tensor([[0.0, 0.0, 0.5, 0.0]])), atol=1e-6)  # object 2 moved
    assert not torch.allclose(v, velocity(pos[:, [2, 3, 0, 1]]), atol=1e-6)                       # roles exchanged
