"""plots.py: every chart writes a non-blank PNG of the expected size, atomically, and draws what it is given."""
import math

import numpy as np
import pytest
from PIL import Image

import plots


def rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def mask(img, colour) -> np.ndarray:
    return (img == np.array(colour)).all(-1)


def not_blank(img) -> bool:
    return (img != 255).any(-1).mean() > 0.005


def metrics(steps, stake=True):
    rows = []
    for s in steps:
        r = {"step": s, "policy_loss": 1 / (1 + s / 100), "stage_acc_threshold": 0.8, "lr": 3e-4 * min(1, s / 200)}
        if stake:
            r.update(stage_loss=0.5 * math.exp(-s / 500), stage_acc=1 - 0.5 * math.exp(-s / 300), keyframe_l1=0.3 / (1 + s / 200))
        rows.append(r)
    return rows


# ----------------------------------------------------------------------------- loss curves

def test_loss_curves_one_panel_per_group(tmp_path):
    out = tmp_path / "new" / "folder" / "loss.png"  # parent folders are created
    assert plots.loss_curves(metrics(range(0, 3001, 50)), out) == out
    img = rgb(out)
    assert img.shape == (30 + 120 * 5, 644, 3) and not_blank(img)
    for c in (plots.BLUE, plots.RED, plots.GREEN, plots.PURPLE, plots.ORANGE):
        assert mask(img, c).sum() > 200, c
    assert [p.name for p in out.parent.iterdir()] == ["loss.png"]  # no temporary file left


def test_loss_curves_without_stake_heads_and_single_row(tmp_path):
    rows = metrics(range(0, 1001, 100), stake=False)
    rows[3]["policy_loss"] = float("nan")  # a non-finite value is skipped, not drawn
    rows[4]["stage_loss"] = None           # a metric that is None everywhere makes no panel
    img = rgb(plots.loss_curves(rows, tmp_path / "a.png"))
    assert img.shape[0] == 30 + 120 * 3 and not_blank(img)  # policy_loss, stage accuracy baseline, lr
    assert not mask(img, plots.RED).any() and not mask(img, plots.PURPLE).any()
    img = rgb(plots.loss_curves(metrics([7]), tmp_path / "b.png"))
    assert img.shape[0] == 30 + 120 * 5 and mask(img, plots.BLUE).any()
    assert plots.loss_curves([], tmp_path / "c.png") is None and not (tmp_path / "c.png").exists()
    assert plots.loss_curves([{"step": 1}], tmp_path / "c.png") is None and not (tmp_path / "c.png").exists()


# ----------------------------------------------------------------------------- rates

def test_bar_heights_follow_the_values(tmp_path):
    values = [0.2, 0.9, 0.5, 0.05]
    path = plots.bar_chart(tmp_path / "bar.png", ["lift_block"], ["none", "SS", "KS", "SS+KS"], [values],
                           [[v - 0.05 for v in values]], [[v + 0.05 for v in values]], "success rate")
    img = rgb(path)
    assert img.shape == (340, 500, 3) and not_blank(img)
    heights = [mask(img[:300], plots.PALETTE[i]).any(1).sum() for i in range(4)]  # rows holding each colour, legend off
    assert np.argsort(heights).tolist() == np.argsort(values).tolist()
    assert heights[1] / heights[0] == pytest.approx(0.9 / 0.2, rel=0.15)


def test_heatmap_shades_each_cell_by_its_rate(tmp_path):
    values = [[0.2, None], [1.0, 0.5]]
    texts = [["0.20 (8/40)", ""], ["1.00 (40/40)", "0.50 (20/40)"]]
    img = rgb(plots.heatmap(tmp_path / "sweep.png", "sweep", ["stage 0.01", "stage 1"], ["0.01", "1"], values, texts,
                            col_title="keyframe weight ->"))
    assert img.shape[0] == 170 and not_blank(img)
    for v in (0.2, 1.0, 0.5):
        g = int(255 * (1 - v))
        assert mask(img, (g, 255, g)).sum() > 1000, v


# ----------------------------------------------------------------------------- points

def test_scatter_whiskers_span_the_interval(tmp_path):
    pts = [(1, 0.0, "wide", 1, -0.5, 0.5), (2, 0.0, "narrow", 2, -0.1, 0.1), (2, 0.3, "bare", 3)]
    img = rgb(plots.scatter_chart(tmp_path / "s.png", pts, "gain vs events", "gripper events", "relative gain"))
    assert img.shape == (340, 520, 3) and not_blank(img)

    def whisker_rows(colour):
        m = mask(img, colour)
        col = m.sum(0).argmax()  # the whisker's column holds most of the colour (the label lies to the right)
        rows = np.flatnonzero(m[:, col])
        return rows.max() - rows.min()
    wide, narrow = whisker_rows(plots.BLUE), whisker_rows(plots.ORANGE)
    plot_rows = (340 - 40 - 44) / 1.2  # pixels per unit of y: the axes fit -0.5 .. 0.5 and 0.3, plus 0.1 either side
    assert wide == pytest.approx(1.0 * plot_rows, abs=3) and narrow == pytest.approx(0.2 * plot_rows, abs=3)
    assert mask(img, plots.GREEN).any()  # a point without whiskers is drawn too


def test_scatter_empty_says_why(tmp_path):
    img = rgb(plots.scatter_chart(tmp_path / "e.png", [], "t", "x", "y", empty_note="nothing conclusive"))
    assert ((img[..., 0] > 120) & (img[..., 1] < 60)).any()  # the note, in plots.NOTE (dark red)


# ----------------------------------------------------------------------------- time lines

def test_stage_probe_shades_the_true_stage(tmp_path):
    T = 100
    true = np.zeros((T, 2))
    true[40:70, 0], true[20:30, 1] = 1, 1
    probs = np.clip(true + 0.05, 0, 1)
    events = [(20, 1, "close"), (30, 1, "open"), (40, 0, "close"), (70, 0, "open")]
    img = rgb(plots.stage_probe(tmp_path / "p.png", "lift_block seed 0", probs, true, np.linspace(0, 1, T), events))
    assert img.shape[0] == 24 + 3 * (110 + 8) + 18 and not_blank(img)
    shade = np.flatnonzero(mask(img, plots.SHADE).any(0))
    assert (shade.max() - shade.min() + 1) / 480 == pytest.approx(0.5, abs=0.01)  # steps 20 .. 70 over T = 100
    assert mask(img, plots.ORANGE).any() and mask(img, plots.BLUE).any()
    assert mask(img, plots.RED).any() and mask(img, plots.GREEN).any()
    one = rgb(plots.stage_probe(tmp_path / "q.png", "any arm", probs[:, :1], true, np.zeros(T), events))
    assert one.shape[0] < img.shape[0]  # one stage panel instead of two


def test_segmentation_draws_long_signals(tmp_path):
    T = 200_000
    x = np.repeat(np.arange(T // 5000) % 2, 5000).astype(float)[:, None]
    events = [(t, 0, "close" if i % 2 else "open") for i, t in enumerate(range(5000, T, 5000))]
    img = rgb(plots.segmentation(tmp_path / "seg.png", "long", 1 - x, [[0.0, 1.0]], x.astype(np.int8), events,
                                 [e[0] for e in events], width=800))
    assert img.shape[1] > 800 and not_blank(img)
    assert mask(img, plots.BLUE).any() and mask(img, plots.RED).any() and mask(img, plots.SHADE).any()


def test_overwrites_atomically(tmp_path):
    p = tmp_path / "x.png"
    p.write_bytes(b"old")
    plots.scatter_chart(p, [(0, 0.1, "a", 0)], "t", "x", "y")
    assert p.read_bytes()[:4] == b"\x89PNG" and sorted(f.name for f in tmp_path.iterdir()) == ["x.png"]
