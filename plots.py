"""Every chart the project draws, with PIL only (no matplotlib).

  loss_curves    train.py's metrics.jsonl rows: one panel per group of curves, log scale for losses
  bar_chart      grouped rates in [0, 1] with interval whiskers (lab/diagnostics.py compare: success per task)
  scatter_chart  labelled points, optionally with vertical interval whiskers (gain vs gripper events)
  heatmap        a grid of rates in [0, 1] with a text per cell (ablation.py: the loss-weight sweep)
  timeline       panels over one time axis: curves, shaded stage, dashed levels, event lines, keyframe
                 marks; stage_probe (lab/diagnostics.py probe) and segmentation (segment.py --plot) are two uses

Every function creates the parent folders and writes its PNG atomically (a temporary file in the same
folder, then os.replace), so a killed run leaves no half image. Colours live in PALETTE and the names
below it, nowhere else.
"""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

PALETTE = [(90, 90, 90), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189)]
GREY, BLUE, ORANGE, GREEN, RED, PURPLE = PALETTE
INK, GRID, FAINT, SHADE, WHITE = (0, 0, 0), (225, 225, 225), (160, 160, 160), (205, 220, 245), (255, 255, 255)
NOTE = (160, 0, 0)  # why a chart is empty
EVENT = {"close": RED, "open": GREEN}  # gripper events: close starts a skill stage, open a motion stage


# ----------------------------------------------------------------------------- drawing helpers

def _canvas(w, h):
    img = Image.new("RGB", (int(w), int(h)), WHITE)
    return img, ImageDraw.Draw(img)


def _save(img, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            img.save(f, format="PNG")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give them the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _curve(d, px, py, colour, width=2):
    """A curve in pixels (px ascending): a polyline, or where points outnumber pixel columns the min-max
    span of each column joined to its neighbours, so a million steps stay legible and fast."""
    px, py = np.asarray(px, float), np.asarray(py, float)
    if len(px) == 1:
        d.ellipse([px[0] - 2, py[0] - 2, px[0] + 2, py[0] + 2], fill=colour)
        return
    cols = np.round(px).astype(int)
    if len(px) <= 2 * (cols[-1] - cols[0] + 1):
        d.line(list(zip(px.tolist(), py.tolist())), fill=colour, width=width)
        return
    starts = np.r_[0, np.flatnonzero(np.diff(cols)) + 1]
    lo, hi = np.minimum.reduceat(py, starts), np.maximum.reduceat(py, starts)
    lo, hi = np.minimum(lo, np.r_[hi[0], hi[:-1]]), np.maximum(hi, np.r_[lo[0], lo[:-1]])
    for c, a, b in zip(cols[starts], lo, hi):
        d.line([c, a, c, b + 1], fill=colour, width=1)


def _dashes(d, x0, x1, y, colour):
    for x in range(int(x0), int(x1), 8):
        d.line([x, y, min(x + 4, x1), y], fill=colour)


# ----------------------------------------------------------------------------- training curves

LOSS_PANELS = [  # (curves, log scale); each curve (metric, colour)
    ([("policy_loss", BLUE)], True),
    ([("stage_loss", RED)], True),
    ([("stage_acc", GREEN), ("stage_acc_threshold", FAINT)], False),
    ([("keyframe_l1", PURPLE)], True),
    ([("lr", ORANGE)], False),
]


def loss_curves(rows: list, png_path):
    """train.py's metrics.jsonl rows ({"step": s, metric: value, ...}) as one panel per group of curves:
    the names in their colours above each panel, its max and min on the left (true values; losses on a
    log scale), the step range below. Stage accuracy shares its panel with the gripper-threshold baseline.
    Metrics missing from every row (a run without StaKe heads) and non-finite values are left out.
    Returns the path written, or None when no row holds a metric (nothing is written)."""
    def points(k, logy):
        return [(r["step"], math.log10(max(r[k], 1e-8)) if logy else float(r[k])) for r in rows
                if "step" in r and isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]
    panels = [([(k, c, pts) for k, c in curves if (pts := points(k, logy))], logy) for curves, logy in LOSS_PANELS]
    panels = [p for p in panels if p[0]]
    if not panels:
        return None
    steps = [s for curves, _ in panels for _, _, pts in curves for s, _ in pts]
    s0, s1 = min(steps), max(max(steps), min(steps) + 1)
    Wp, Hp, L, pad, head = 560, 90, 70, 14, 16
    img, d = _canvas(L + Wp + pad, pad + len(panels) * (head + Hp + pad) + 16)
    for i, (curves, logy) in enumerate(panels):
        top = pad + i * (head + Hp + pad)
        y0 = top + head
        ys = [y for _, _, pts in curves for _, y in pts]
        lo, hi = min(ys), max(max(ys), min(ys) + 1e-9)
        x = L
        for k, c, _ in curves:
            d.text((x, top), k, fill=c)
            x += d.textlength(k) + 14
        if logy:
            d.text((x, top), "(log scale)", fill=INK)
        d.line([L - 1, y0, L - 1, y0 + Hp, L + Wp, y0 + Hp], fill=INK)  # axes
        show = (lambda v: 10 ** v) if logy else (lambda v: v)
        d.text((4, y0), f"{show(hi):.3g}", fill=INK)
        d.text((4, y0 + Hp - 12), f"{show(lo):.3g}", fill=INK)
        for _, c, pts in curves:
            xs, vs = np.array(pts, float).T
            _curve(d, L + (xs - s0) / (s1 - s0) * (Wp - 1), y0 + (hi - vs) / (hi - lo) * (Hp - 1), c)
    d.text((L, img.height - 16), f"step {s0} - {s1}", fill=INK)
    return _save(img, png_path)


# ----------------------------------------------------------------------------- rates: bars and heat map

def bar_chart(path, groups: list, variants: list, values, lows, highs, title: str):
    """Grouped bars (groups x variants) of rates in [0, 1] with interval whiskers (lows, highs as values;
    None for no whiskers); a legend of the variants below."""
    W, H, L, B = max(120 + 110 * len(groups), 60 + 110 * len(variants), 7 * len(title) + 60), 340, 50, 60
    img, d = _canvas(W, H)
    d.text((L, 6), title, fill=INK)
    y = lambda v: H - B - v * (H - B - 30)  # noqa: E731
    for v in (0, 0.25, 0.5, 0.75, 1.0):
        d.line([L, y(v), W - 10, y(v)], fill=GRID)
        d.text((8, y(v) - 6), f"{v:.2f}", fill=INK)
    bw = 90 / max(len(variants), 1)
    for gi, g in enumerate(groups):
        x0 = L + 10 + gi * 110
        d.text((x0, H - B + 6), str(g)[:16], fill=INK)
        for vi in range(len(variants)):
            xa = x0 + vi * bw
            d.rectangle([xa, y(values[gi][vi]), xa + bw - 3, y(0)], fill=PALETTE[vi % len(PALETTE)])
            if lows is not None and highs is not None:
                xm = xa + bw / 2 - 1
                d.line([xm, y(lows[gi][vi]), xm, y(highs[gi][vi])], fill=INK, width=1)
    for vi, v in enumerate(variants):
        d.rectangle([L + vi * 110, H - 22, L + vi * 110 + 10, H - 12], fill=PALETTE[vi % len(PALETTE)])
        d.text((L + vi * 110 + 14, H - 24), str(v)[:14], fill=INK)
    return _save(img, path)


def heatmap(path, title: str, row_labels: list, col_labels: list, values, texts, col_title: str = ""):
    """A grid of rates in [0, 1] (values[r][c], None for an empty cell), white (0) to green (1), with
    texts[r][c] written in each cell; col_title above the column labels."""
    img, d = _canvas(1, 1)
    cw = max([110] + [d.textlength(t) + 16 for row in texts for t in row])
    lw = max([100] + [d.textlength(t) + 16 for t in row_labels])
    img, d = _canvas(max(lw + cw * len(col_labels) + 10, d.textlength(title) + 16), 70 + 50 * len(row_labels))
    d.text((8, 6), title, fill=INK)
    d.text((lw, 24), col_title, fill=INK)
    for j, c in enumerate(col_labels):
        d.text((lw + 10 + cw * j, 40), c, fill=INK)
    for i, r in enumerate(row_labels):
        d.text((8, 70 + 50 * i), r, fill=INK)
        for j in range(len(col_labels)):
            if values[i][j] is not None:
                g = int(255 * (1 - min(max(values[i][j], 0.0), 1.0)))
                d.rectangle([lw + cw * j, 56 + 50 * i, lw + cw * (j + 1) - 10, 100 + 50 * i], fill=(g, 255, g), outline=INK)
            d.text((lw + 8 + cw * j, 70 + 50 * i), texts[i][j], fill=INK)
    return _save(img, path)


# ----------------------------------------------------------------------------- points

def scatter_chart(path, points: list, title: str, xlabel: str, ylabel: str,
                  empty_note="no conclusive points: every baseline is within 0.1 of floor or ceiling"):
    """points: (x, y, label, colour index into PALETTE), or (x, y, label, colour, lo, hi) with a vertical
    whisker from lo to hi. Axes fitted to the data (whiskers included), zero line drawn; points of
    different colours at one x are set a few pixels apart so their whiskers stay apart."""
    W, H, L, B = 520, 340, 60, 40
    img, d = _canvas(W, H)
    d.text((L, 6), title, fill=INK)
    if points:
        xs = [p[0] for p in points]
        ys = [v for p in points for v in (p[1], *p[4:6])]
        x0, x1 = min(xs) - 0.5, max(xs) + 0.5
        y0, y1 = min(min(ys), 0) - 0.1, max(max(ys), 0) + 0.1
        cis = sorted({p[3] for p in points})
        X = lambda v: L + (v - x0) / (x1 - x0) * (W - L - 20)  # noqa: E731
        Y = lambda v: H - B - (v - y0) / (y1 - y0) * (H - B - 44)  # noqa: E731
        d.line([L, Y(0), W - 20, Y(0)], fill=FAINT)
        for v in np.linspace(y0, y1, 5):
            d.text((4, Y(v) - 6), f"{v:+.2f}", fill=INK)
        for v in sorted(set(xs)):
            d.text((X(v) - 3, H - B + 4), f"{v:g}", fill=INK)
        for x, yv, label, ci, *whisker in points:
            c, px = PALETTE[ci % len(PALETTE)], X(x) + 10 * (cis.index(ci) - (len(cis) - 1) / 2)
            if whisker:
                lo, hi = whisker
                d.line([px, Y(lo), px, Y(hi)], fill=c, width=1)
                d.line([px - 3, Y(lo), px + 3, Y(lo)], fill=c)
                d.line([px - 3, Y(hi), px + 3, Y(hi)], fill=c)
            d.ellipse([px - 4, Y(yv) - 4, px + 4, Y(yv) + 4], fill=c)
            d.text((px + 6, Y(yv) - 6), label[:18], fill=c)
    else:  # say why the chart is empty rather than leave a blank plot
        d.text((L, H // 2), empty_note, fill=NOTE)
    d.text((W // 2 - 40, H - 18), xlabel, fill=INK)
    d.text((4, 22), ylabel, fill=INK)
    return _save(img, path)


# ----------------------------------------------------------------------------- time lines

def timeline(path, title: str, panels: list, keyframes=(), note: str = "", width: int | None = None):
    """Panels stacked over one time axis of T steps, step t drawn over [t, t + 1). Each panel is a dict:
      label   text on the left
      lines   [(values (T,), colour)]: curves (min-max per pixel column when T exceeds the width)
      band    (T,) bool (optional): shaded where true (the skill stage)
      levels  [value] (optional): dashed horizontal lines
      range   (lo, hi) (optional): the y range (default: the data's, levels included), printed on the left
      events  [(t, kind)] (optional): vertical lines at the start of step t, coloured by EVENT[kind]
      height  pixels (optional, 110)
    keyframes: steps marked by small triangles above the first panel; note: a legend line at the bottom;
    width: the time axis in pixels (default 3 per step, within 480 .. 1200)."""
    T = max(len(v) for p in panels for v, _ in p["lines"])
    img, d = _canvas(1, 1)
    L = max([60] + [d.textlength(p["label"]) + 12 for p in panels])
    pw = width or min(max(3 * T, 480), 1200)
    ph = [p.get("height", 110) for p in panels]
    top0 = 24 + (10 if len(keyframes) else 0)
    img, d = _canvas(L + max(pw, d.textlength(title), d.textlength(note)) + 12, top0 + sum(ph) + 8 * len(panels) + (18 if note else 4))
    Xe = lambda t: L + np.asarray(t, float) * pw / T  # noqa: E731  left edge of step t
    d.text((L, 4), title, fill=INK)
    for k in np.unique(np.asarray(keyframes, int)):
        x = float(Xe(k + 0.5))
        d.polygon([(x - 4, top0 - 9), (x + 4, top0 - 9), (x, top0 - 2)], fill=INK)
    top = top0
    for p, h in zip(panels, ph):
        lines, levels = p["lines"], list(p.get("levels", []))
        vals = np.concatenate([np.asarray(v, float) for v, _ in lines] + [np.asarray(levels, float)])
        lo, hi = p.get("range") or (vals.min(), vals.max())
        hi = max(hi, lo + 1e-12)
        Y = lambda v: top + 6 + (h - 12) * (hi - np.asarray(v, float)) / (hi - lo)  # noqa: E731
        if p.get("band") is not None:
            b = np.asarray(p["band"], bool).astype(np.int8)
            edges = np.flatnonzero(np.diff(np.r_[0, b, 0]))
            for a, e in zip(edges[::2], edges[1::2]):
                d.rectangle([float(Xe(a)), top, float(Xe(e)), top + h], fill=SHADE)
        d.rectangle([L, top, L + pw, top + h], outline=GRID)
        for v in levels:
            _dashes(d, L, L + pw, float(Y(v)), FAINT)
        for t, kind in p.get("events", []):
            d.line([float(Xe(t)), top, float(Xe(t)), top + h], fill=EVENT.get(kind, INK), width=2)
        for v, c in lines:
            _curve(d, Xe(np.arange(len(v)) + 0.5), Y(v), c)
        d.text((4, top + h / 2 - 6), p["label"], fill=INK)
        d.text((4, top), f"{hi:.3g}", fill=FAINT)
        d.text((4, top + h - 12), f"{lo:.3g}", fill=FAINT)
        top += h + 8
    if note:
        d.text((L, img.height - 16), note, fill=GREY)
    return _save(img, path)


def stage_probe(path, title: str, probs, true_stage, key_err, events, arm_names=("left", "right")):
    """The stage head read along a rollout: per stage-head output k a panel with its p(skill) (probs
    (T, K)) over the true skill stage shaded (true_stage (T, K'), the any-arm stage where K' != K), then the
    keyframe head's error (key_err (T,)); events [(t, arm, kind)] as lines (in their arm's panel)."""
    probs = np.asarray(probs, float).reshape(len(probs), -1)
    true_stage = np.asarray(true_stage, float).reshape(len(true_stage), -1)
    K = probs.shape[1]
    panels = [dict(label="any" if K == 1 else arm_names[k] if k < len(arm_names) else f"arm {k}",
                   lines=[(probs[:, k], ORANGE)], range=(0.0, 1.0), levels=[0.5],
                   band=(true_stage[:, k] if true_stage.shape[1] == K else true_stage.max(1)) > 0.5,
                   events=[(t, kind) for t, arm, kind in events if K == 1 or arm == k]) for k in range(K)]
    err = np.asarray(key_err, float)
    panels.append(dict(label="keyframe |err|", lines=[(err, BLUE)], range=(0.0, float(err.max()) + 1e-6),
                       events=[(t, kind) for t, _, kind in events]))
    return timeline(path, title, panels, note="shaded: true skill stage; orange: stage head p(skill); blue: "
                    "keyframe head |error|; lines: gripper events (red close, green open)")


def segmentation(path, title: str, signal, levels, stage, events, keyframes, width: int = 1200):
    """segment.py's result for one episode: per gripper its signal (signal (T, G)), its (closed, open)
    levels (levels (G, 2)) dashed, the closed (skill) stage (stage (T, G)) shaded, its events
    [(t, arm, kind)] as lines; keyframe steps (keyframes) as triangles above."""
    x = np.asarray(signal, float).reshape(len(signal), -1)
    panels = [dict(label=f"gripper {g}", lines=[(x[:, g], BLUE)], levels=list(np.asarray(levels, float)[g]),
                   band=np.asarray(stage)[:, g] == 1, height=140,
                   events=[(t, kind) for t, arm, kind in events if arm == g]) for g in range(x.shape[1])]
    return timeline(path, title, panels, keyframes=keyframes, width=width, note="blue: signal; dashes: levels; "
                    "shaded: closed (skill); red/green lines: close/open events; triangles: keyframes")
