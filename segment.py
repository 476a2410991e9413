"""Stages and keyframes from gripper open/close states: the whole of StaKe's extra supervision.

StaKe labels every step as motion (gripper open) or skill (gripper closed) and asks a second head for
the action at the next gripper transition (the keyframe). Both come from one signal, so one invented or
missed event corrupts the labels of a whole episode. Simulated grippers are clean; real ones chatter,
drift, stop part-way on an object and ramp slowly. The recipe here, per gripper:

  1. levels   (closed, open) are given, or estimated robustly from the episode: percentiles of the
              signal with glitches shorter than `min_dwell` erased give a rough midpoint, and each level
              is the median on its side of it. A gripper whose levels do not stand out from its noise
              (or differ by under `min_rel_range` of their magnitude) never moves: no events.
  2. state    hysteresis on the signal normalised to closed = 0, open = 1: closed below `close_below`,
              open above `open_above`, unchanged in between. A grasp that stops on an object sits well
              under `close_below`, so it is closed; noise around one level never reaches the other.
  3. dwell    runs with fewer than `min_dwell` steps past their own threshold are glitches and take the
              state before them. Steps the hysteresis merely holds (in the band) do not count: a two-step
              glitch whose next step's noise stops just short of `open_above` is still two steps long.
  4. timing   hysteresis decides THAT a transition happened; WHEN is the first step past the midpoint
              between the levels of the runs before and after it (the middle of a slow ramp).

Which signal: training labels use the COMMANDED gripper channel of the actions by default. It is what the
policy outputs and what the keyframe head predicts; it switches exactly when the operator decides, and it
is clean. The MEASURED opening in qpos lags the command by the finger travel time, stops part-way on
objects and depends on object size and contact, so its event times move with the scene; use it
(`signal="qpos"`) for datasets whose actions carry no usable gripper command. `--summary` checks both.

Everything is vectorised over time (a Python loop runs only over grippers and events), numpy only: the
CLI reads episode_*.npz itself (no project module), and only --plot imports plots.py (PIL).
CLI: python segment.py DIR [--episode K] [--signal action|qpos] [--plot FILE.png] | DIR --summary | --bench
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass
class Segmentation:
    """What `segment` found for an episode of T steps and G grippers.

    events: [(t, arm, kind)] with kind "close" or "open", sorted by (t, arm); t is the first step of the
        new state. Two arms may share a t.
    stage: (T, G) int8, 1 where that gripper is closed (skill), 0 where open (motion).
    keyframe_index: (T,) int64, the step of the first event of any arm strictly after t; T-1 if none.
    levels: (G, 2) float64, the (closed, open) levels used, in the input's units.
    moving: (G,) bool, False for a gripper judged never to move (no events, constant stage).
    """
    events: list
    stage: np.ndarray
    keyframe_index: np.ndarray
    levels: np.ndarray
    moving: np.ndarray

    def count(self, arm: int | None = None) -> int:
        """Number of events, of one arm or of all."""
        return sum(1 for _, a, _ in self.events if arm is None or a == arm)


# ----------------------------------------------------------------------------- input checks

def _first_bad(name: str, x: np.ndarray, col: str) -> None:
    """Raise ValueError naming the first NaN/inf as 'name: NaN at step t, col g'."""
    bad = ~np.isfinite(x)
    if bad.any():
        t, g = np.argwhere(bad)[0]
        raise ValueError(f"{name}: {'NaN' if np.isnan(x[t, g]) else 'inf'} at step {t}, {col} {g}")


def _as_signal(gripper) -> np.ndarray:
    """(T,) or (T, G) of any real dtype -> (T, G) float64; ValueError on shape, emptiness, NaN or inf."""
    try:
        x = np.asarray(gripper, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"gripper: not a numeric array ({e})") from None
    if x.ndim not in (1, 2):
        raise ValueError(f"gripper: expected shape (T,) or (T, G), got {x.shape} ({x.ndim} dimensions)")
    x = x[:, None] if x.ndim == 1 else x
    if x.shape[0] == 0:
        raise ValueError(f"gripper: empty (T = 0, shape {x.shape})")
    if x.shape[1] == 0:
        raise ValueError(f"gripper: no grippers (G = 0, shape {x.shape})")
    _first_bad("gripper", x, "gripper")
    return x


# ----------------------------------------------------------------------------- the four steps, one gripper

def _running(op, y: np.ndarray, k: int) -> np.ndarray:
    """op (np.maximum / np.minimum) over the trailing window of k steps: an excursion shorter than k
    never fills a window, so the running max erases downward glitches and the running min upward ones."""
    out = y.copy()
    for j in range(1, min(k, len(y))):
        op(out[j:], y[:-j], out=out[j:])
    out[:k - 1] = out[min(k, len(y)) - 1]  # the first steps take the first full window, glitches included
    return out


def _estimate_levels(y, min_dwell, level_percentile, min_contrast, min_rel_range):
    """(closed, open, moving) for one gripper, open high. Percentiles of envelopes that erase anything
    held for under 2 * min_dwell + 1 steps give a rough midpoint (robust to outliers, and a level held
    for only a few % of the episode still shows); each level is then the median of the glitch-free
    (min_dwell) envelope on its side, which removes the percentiles' noise bias. A gripper that never
    moves has both sides within its noise."""
    w = 2 * min_dwell + 1  # rough levels: held for w steps, so one-count flicker of a quantised signal is no level
    c0 = np.percentile(_running(np.maximum, y, w), level_percentile)
    o0 = np.percentile(_running(np.minimum, y, w), 100 - level_percentile)
    mid = 0.5 * (c0 + o0)
    low_env, high_env = _running(np.maximum, y, min_dwell), _running(np.minimum, y, min_dwell)
    low, high = low_env[low_env < mid], high_env[high_env > mid]
    if o0 <= c0 or len(low) == 0 or len(high) == 0:
        return c0, o0, False
    c, o = float(np.median(low)), float(np.median(high))
    noise = 1.4826 * float(np.median(np.abs(np.diff(y)))) / np.sqrt(2) if len(y) > 1 else 0.0
    gap = o - c
    moving = gap > 0 and gap >= min_contrast * noise and gap >= min_rel_range * max(abs(c), abs(o))
    return c, o, bool(moving)


def _hysteresis(u: np.ndarray, close_below: float, open_above: float) -> np.ndarray:
    """(T,) int8 state: 1 once u < close_below, 0 once u > open_above, held in between (forward fill of
    the last decisive step; steps before the first decisive one take its state)."""
    code = np.where(u < close_below, 1, np.where(u > open_above, 0, -1)).astype(np.int8)
    decisive = np.flatnonzero(code >= 0)
    if len(decisive) == 0:  # never leaves the band: the side of the midpoint decides
        return np.full(len(u), int(np.median(u) < 0.5), np.int8)
    last = np.where(code >= 0, np.arange(len(u)), -1)
    np.maximum.accumulate(last, out=last)
    last[last < 0] = decisive[0]
    return code[last]


def _drop_short_runs(s: np.ndarray, past: np.ndarray, min_dwell: int) -> np.ndarray:
    """Runs with fewer than min_dwell steps `past` their state's threshold take the state of the last long
    run before them (or the first long run, at the start); steps held in the hysteresis band do not count.
    If no run is long enough, the majority state holds throughout."""
    starts = np.r_[0, np.flatnonzero(s[1:] != s[:-1]) + 1]
    lengths = np.diff(np.r_[starts, len(s)])
    keep = np.add.reduceat(past, starts, dtype=np.int64) >= min_dwell
    if not keep.any():
        return np.full(len(s), int(s.mean() > 0.5), np.int8)
    src = np.where(keep, np.arange(len(starts)), -1)
    np.maximum.accumulate(src, out=src)
    src[src < 0] = np.flatnonzero(keep)[0]
    return np.repeat(s[starts][src], lengths).astype(np.int8)


def _event_times(u: np.ndarray, state: np.ndarray, switches: np.ndarray) -> np.ndarray:
    """Move each hysteresis switch to the first step past the midpoint between the levels of the run
    before and the run after it. Local levels, not (0, 1): a grasp that stops at 0.55 of the range never
    crosses 0.5 yet has a clear middle between 1 and 0.55. A run's level is its quartile on the far side
    (25th percentile if closed, 75th if open): ramps at both ends pull a median inward, while the
    quartile stays on the plateau as long as it fills a quarter of the run. Vectorised over events."""
    K, T = len(switches), len(u)
    if K == 0:
        return switches
    starts = np.r_[0, switches]
    lengths = np.diff(np.r_[starts, T])
    run = np.repeat(np.arange(K + 1), lengths)
    # per-run quartiles with one sort: key = run + u squashed monotonically into (0, 1)
    srt = u[np.argsort(run + (0.5 + np.arctan(u) / np.pi) * 0.999)]
    level = srt[starts + np.where(state[starts] == 1, 1, 3) * (lengths - 1) // 4]
    mid = 0.5 * (level[:-1] + level[1:])  # event k lies between run k and run k + 1
    closing = state[switches] == 1
    # each step's side w.r.t. the event that ends its run (old side) and the one that starts it (new side)
    m_end, m_start = mid[np.minimum(run, K - 1)], mid[np.maximum(run - 1, 0)]
    old_side = np.where(closing[np.minimum(run, K - 1)], u >= m_end, u <= m_end) & (run < K)
    new_side = np.where(closing[np.maximum(run - 1, 0)], u < m_start, u > m_start) & (run > 0)
    idx = np.arange(T)
    last_old = np.maximum.accumulate(np.where(old_side, idx, -1))
    first_new = np.minimum.accumulate(np.where(new_side, idx, T)[::-1])[::-1]
    back, fwd = last_old[switches - 1], first_new[switches]
    ends = np.r_[switches[1:], T]
    t = np.where(new_side[switches],                                   # already past the middle at the switch:
                 np.where(back >= starts[:-1], back + 1, switches),    # last old-side step, plus one
                 np.where(fwd < ends, fwd, switches))                  # else the first new-side step after it
    return np.maximum.accumulate(t - np.arange(K)) + np.arange(K)     # strictly increasing, always


# ----------------------------------------------------------------------------- public API

def segment(gripper, *, open_is_high: bool = True, levels=None, close_below: float = 0.6,
            open_above: float = 0.8, min_dwell: int = 3, level_percentile: float = 1.0,
            min_contrast: float = 4.0, min_rel_range: float = 0.1,
            constant_state: str = "open") -> Segmentation:
    """Events, per-gripper stage and keyframe index from gripper signals.

    gripper: (T,) or (T, G) array in any units (metres 0-0.08, 0-1, 0-255 ...).
    open_is_high (True): larger values mean more open. False for signals such as 255 = closed.
    levels (None): (closed, open) absolute levels, one pair or one per gripper as (G, 2). None estimates
        them per episode and gripper; each level must then be held for at least `level_percentile` % of
        the episode and 2 * min_dwell + 1 steps, and a gripper that never moves cannot be told open or
        closed (see constant_state).
    close_below (0.6): closed once the signal drops below this fraction of the way from closed to open.
        High enough that a grasp stopped on an object (measured opening 0.3-0.5) counts as closed.
    open_above (0.8): open once above this fraction. The band between the two is the hysteresis.
    min_dwell (3): a state held for fewer steps (counting only steps past its threshold, not those left
        in the band between the two) is a glitch and makes no event.
    level_percentile (1.0): percentile (and 100 minus it) for the rough levels; outliers held for less
        than this share of the episode are ignored.
    min_contrast (4.0): a gripper moves only if open - closed >= this many robust noise sigmas (from
        the median absolute step difference); noise alone gives under 2. Estimated levels only.
    min_rel_range (0.1): ...and only if open - closed >= this fraction of max(|closed|, |open|), so a
        gripper that never moves but drifts slowly makes no events. Signals with a large offset (encoder
        ticks 1000-1050) need levels= or min_rel_range=0. Estimated levels only.
    constant_state ("open"): stage of a gripper judged never to move when levels are estimated ("open" or
        "closed"); with given levels the signal is compared with them instead.
    """
    x = _as_signal(gripper)
    T, G = x.shape
    if not (0.0 < close_below < open_above < 1.0):
        raise ValueError(f"thresholds: need 0 < close_below < open_above < 1, got {close_below}, {open_above}")
    if int(min_dwell) != min_dwell or min_dwell < 1:
        raise ValueError(f"min_dwell: must be an integer >= 1, got {min_dwell}")
    if not 0.0 <= level_percentile < 50.0:
        raise ValueError(f"level_percentile: must be in [0, 50), got {level_percentile}")
    if constant_state not in ("open", "closed"):
        raise ValueError(f"constant_state: must be 'open' or 'closed', got {constant_state!r}")
    sign = 1.0 if open_is_high else -1.0  # work in "open is high" units throughout
    if levels is not None:
        lv = np.asarray(levels, dtype=np.float64)
        if lv.shape not in ((2,), (G, 2)):
            raise ValueError(f"levels: expected (closed, open) or shape ({G}, 2), got shape {lv.shape}")
        lv = np.broadcast_to(lv, (G, 2))
        _first_bad("levels", lv, "gripper")
        for g in range(G):
            if sign * (lv[g, 1] - lv[g, 0]) <= 0:
                raise ValueError(f"levels: gripper {g} has (closed, open) = ({lv[g, 0]}, {lv[g, 1]}), "
                                 f"but open_is_high={open_is_high}")
    stage = np.empty((T, G), np.int8)
    out_levels, moving, events = np.empty((G, 2)), np.ones(G, bool), []
    for g in range(G):
        y = sign * x[:, g]
        if levels is None:
            c, o, moving[g] = _estimate_levels(y, int(min_dwell), level_percentile, min_contrast, min_rel_range)
        else:
            c, o = sign * lv[g, 0], sign * lv[g, 1]
        out_levels[g] = sign * c, sign * o
        if not moving[g]:
            stage[:, g] = int(constant_state == "closed")
            continue
        u = (y - c) / (o - c)
        raw = _hysteresis(u, close_below, open_above)
        past = np.where(raw == 1, u < close_below, u > open_above)  # not merely held in the band
        state = _drop_short_runs(raw, past, int(min_dwell))
        switches = np.flatnonzero(state[1:] != state[:-1]) + 1
        times = _event_times(u, state, switches)
        toggles = np.zeros(T, np.int8)
        toggles[times] = 1
        stage[:, g] = np.bitwise_xor.accumulate(toggles) ^ state[0]
        events += [(int(t), g, "close" if state[s] == 1 else "open") for t, s in zip(times, switches)]
    events.sort(key=lambda e: (e[0], e[1]))
    steps = np.unique(np.array([e[0] for e in events], dtype=np.int64))
    nxt = np.searchsorted(steps, np.arange(T), side="right")  # first event strictly after t
    keyframe_index = np.append(steps, T - 1)[nxt]
    return Segmentation(events, stage, keyframe_index, out_levels, moving)


def keyframe_targets(actions, seg: Segmentation) -> np.ndarray:
    """(T, A): the action at each step's keyframe, actions[seg.keyframe_index] (the KS head's target)."""
    a = np.asarray(actions)
    T = len(seg.keyframe_index)
    if a.ndim != 2 or a.shape[0] != T:
        raise ValueError(f"actions: expected shape (T, A) with T = {T} (from the segmentation), got {a.shape}")
    _first_bad("actions", a, "dim")
    return a[seg.keyframe_index]


def labels_for_episode(action, gripper_indices, *, signal: str = "action", qpos=None, **segment_kwargs):
    """(Segmentation, keyframe targets (T, A)) for one episode.

    action: (T, A) actions; the keyframe targets are always taken from them.
    gripper_indices: the gripper dimensions, in both action and qpos.
    signal ("action"): "action" segments the commanded gripper channel (the default, see the module
        docstring for why), "qpos" the measured opening, which then must be given as qpos (T, D).
    segment_kwargs: passed on to `segment` (open_is_high, levels, min_dwell, ...).
    """
    if signal not in ("action", "qpos"):
        raise ValueError(f"signal: must be 'action' or 'qpos', got {signal!r}")
    if signal == "qpos" and qpos is None:
        raise ValueError("qpos: required when signal='qpos'")
    src = np.asarray(action if signal == "action" else qpos)
    if src.ndim != 2:
        raise ValueError(f"{signal}: expected shape (T, D), got {src.shape}")
    idx = [int(i) for i in gripper_indices]
    if not idx or any(not 0 <= i < src.shape[1] for i in idx):
        raise ValueError(f"gripper_indices: {idx} must name dimensions of {signal} in [0, {src.shape[1]})")
    seg = segment(src[:, idx], **segment_kwargs)
    return seg, keyframe_targets(action, seg)


# ----------------------------------------------------------------------------- CLI

def _load_meta(folder) -> dict:
    """DIR/meta.json (the keys segment.py reads); ValueError naming the file and the key, as data.load_meta."""
    path = Path(folder) / "meta.json"
    if not path.is_file():
        raise ValueError(f"{path}: missing (is {folder} an episode folder made by `data.py generate`?)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    for k in ("gripper_indices", "gripper_convention", "tasks"):
        if k not in meta:
            raise ValueError(f"{path}: missing key '{k}'")
    return meta


def _episode_paths(folder) -> list:
    return sorted(Path(folder).glob("episode_*.npz"))


def _load_episode(path) -> dict:
    """{'action', 'qpos', 'task'} of one episode_*.npz (data.py's format; the images are not read);
    ValueError naming the file and the key, with data.load_episode's messages."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such episode file")
    try:
        with np.load(path, allow_pickle=False) as z:
            ep, keys = {k: z[k] for k in ("qpos", "action", "task") if k in z.files}, sorted(z.files)
    except Exception as e:  # zip errors, truncated files, pickled objects (not numpy's allow_pickle advice)
        raise ValueError(f"{path}: not a valid episode file (cannot be read as an .npz of arrays: "
                         f"{type(e).__name__})") from None
    for k in ("qpos", "action", "task"):
        if k not in ep:
            raise ValueError(f"{path}: missing key '{k}' (has {keys})")
    qpos, action, ep["task"] = ep["qpos"], ep["action"], str(ep["task"])
    if qpos.ndim != 2 or action.ndim != 2:
        raise ValueError(f"{path}: 'qpos' and 'action' must be (T, D); got {qpos.shape} and {action.shape}")
    if len(action) == 0:
        raise ValueError(f"{path}: key 'action' is empty (T = 0)")
    if len(qpos) != len(action):
        raise ValueError(f"{path}: 'qpos' has {len(qpos)} steps but 'action' has {len(action)}")
    return ep


def open_is_high(convention) -> bool:
    """meta['gripper_convention'] such as "1 = open, 0 = closed" -> True."""
    s = str(convention).lower().replace(" ", "")
    return not ("0=open" in s or "1=closed" in s)


SETTINGS = ("signal", "levels", "close_below", "open_above", "min_dwell", "level_percentile", "min_contrast",
            "min_rel_range", "constant_state")


def settings(meta: dict) -> tuple:
    """(signal, `segment` keyword arguments) for an episode folder's meta.json. Its optional "segment" entry
    (written by `python -m interop.lerobot import`) names the channel ("action" or "qpos") and any of segment's
    settings: levels (closed, open), or None to estimate them per episode, thresholds, dwell. Without it: this
    project's recordings, whose commanded channel sits at the levels 0 and 1 of its gripper_convention."""
    high = open_is_high(meta["gripper_convention"])
    s = dict(meta.get("segment") or {})
    if not s:
        return "action", dict(open_is_high=high, levels=(0.0, 1.0) if high else (1.0, 0.0))
    if bad := sorted(set(s) - set(SETTINGS)):
        raise ValueError(f"'segment' has unknown key(s) {bad} (known: {list(SETTINGS)})")
    signal = s.pop("signal", "action")
    if signal not in ("action", "qpos"):
        raise ValueError(f"'segment': signal must be 'action' or 'qpos', got {signal!r}")
    return signal, dict(open_is_high=high, **s)


def _episode_line(name, ep, seg) -> str:
    ev = ", ".join(f"{k}@{t} a{a}" for t, a, k in seg.events) or "none"
    share = " ".join(f"a{g} {seg.stage[:, g].mean():.2f}" for g in range(seg.stage.shape[1]))
    return (f"{name} task={ep['task']} T={len(ep['action'])} events={seg.count()}: {ev} | "
            f"skill share {seg.stage.mean():.2f} ({share})")


def _labels(p, ep, meta, signal, kw):
    try:
        return labels_for_episode(ep["action"], meta["gripper_indices"], signal=signal, qpos=ep["qpos"], **kw)[0]
    except ValueError as e:
        raise ValueError(f"{p}: {e}") from None


def _summary(meta, paths, load, kw) -> int:
    """Event counts (all arms together) per task for both signals. An episode is flagged when the two
    signals disagree or either differs from the task's usual count: meta.json's tasks[task]
    ["gripper_events"], else the most common commanded count. Returns the number flagged."""
    rows = []
    for p in paths:
        ep = load(p)
        rows.append((p.name, ep["task"], {s: _labels(p, ep, meta, s, kw).count() for s in ("action", "qpos")}))
    flagged = 0
    for task in sorted({r[1] for r in rows}):
        mine = [r for r in rows if r[1] == task]
        spec = meta["tasks"].get(task, {}).get("gripper_events")
        usual = spec if spec is not None else Counter(r[2]["action"] for r in mine).most_common(1)[0][0]
        print(f"task {task}: {len(mine)} episodes, expected {usual} events "
              f"({'meta.json' if spec is not None else 'most common'})")
        for s in ("action", "qpos"):
            dist = sorted(Counter(r[2][s] for r in mine).items())
            print(f"  {s:6s}: " + ", ".join(f"{k} events in {v} episodes" for k, v in dist))
        for name, _, n in mine:
            why = (["signals disagree"] if n["action"] != n["qpos"] else []) + \
                  [f"{s} differs from {usual}" for s in ("action", "qpos") if n[s] != usual]
            if why:
                flagged += 1
                print(f"  FLAG {name}: action {n['action']}, qpos {n['qpos']} ({'; '.join(why)})")
    print(f"OK: all {len(rows)} episodes match their task's event count on both signals" if not flagged
          else f"FLAGGED {flagged} of {len(rows)} episodes")
    return flagged


def bench(T: int = 500_000, G: int = 2, seed: int = 0) -> float:
    """Time `segment` (best of 3) on T (500k) x G (2) noisy steps: 10-step ramps, noise sigma 0.03, one-step
    glitches, an event every ~250 steps; seed (0) for the signal. Returns seconds."""
    rng = np.random.default_rng(seed)
    closed = np.repeat(np.arange(T // 100) % 2, rng.integers(100, 400, T // 100))[:T]  # dwell 100-400
    clean = np.convolve(1.0 - closed, np.ones(10) / 10, "same")  # 10-step ramps
    x = np.stack([np.roll(clean, 37 * g) for g in range(G)], 1) + rng.normal(0, 0.03, (T, G))
    x[rng.integers(0, T, T // 500), rng.integers(0, G, T // 500)] = 0.5  # one-step glitches
    segment(x[:1000])
    best = min(_timed(x) for _ in range(3))
    n = segment(x).count()
    print(f"segment: {T * G:,} steps ({T:,} x {G} grippers, {n:,} events) in {best * 1e3:.0f} ms "
          f"= {T * G / best / 1e6:.1f} M steps/s")
    return best


def _timed(x) -> float:
    t0 = time.perf_counter()
    segment(x)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Gripper events, stages and keyframes of recorded episodes.")
    ap.add_argument("dir", nargs="?", help="episode folder (meta.json + episode_*.npz); 'bench' = --bench")
    ap.add_argument("--episode", type=int, help="only this episode index (default: all)")
    ap.add_argument("--signal", choices=("action", "qpos"), default="action", help="gripper signal to segment")
    ap.add_argument("--plot", help="write a PNG of the episode (--episode, default the first)")
    ap.add_argument("--summary", action="store_true", help="event counts per task, both signals; exit 1 if flagged")
    ap.add_argument("--min-dwell", type=int, default=3, help="minimum state duration in steps (3)")
    ap.add_argument("--bench", action="store_true", help="time 1M steps (500k x 2 grippers)")
    args = ap.parse_args(argv)
    if args.bench or args.dir == "bench":
        bench()
        return 0
    if args.dir is None:
        ap.error("DIR is required (or --bench)")
    try:
        meta, paths = _load_meta(args.dir), _episode_paths(args.dir)
        kw = dict(open_is_high=open_is_high(meta["gripper_convention"]), min_dwell=args.min_dwell)
        if args.summary:
            return int(_summary(meta, paths, _load_episode, kw) > 0)
        if args.episode is not None:
            if not 0 <= args.episode < len(paths):
                raise ValueError(f"--episode {args.episode}: {args.dir} has {len(paths)} episodes")
            paths = [paths[args.episode]]
        for i, p in enumerate(paths):
            ep = _load_episode(p)
            seg = _labels(p, ep, meta, args.signal, kw)
            print(_episode_line(p.name, ep, seg))
            if args.plot and i == 0:
                import plots  # lazy, and only here: PIL; `import segment` stays numpy-only
                plots.segmentation(args.plot, f"{p.name} ({ep['task']}), {args.signal} gripper signal",
                                   ep[args.signal][:, meta["gripper_indices"]], seg.levels, seg.stage,
                                   seg.events, seg.keyframe_index)
                print(f"wrote {args.plot} (blue signal, grey dashes levels, shaded closed/skill, "
                      f"red/green lines close/open, black triangles keyframes)")
    except ValueError as e:
        print(f"segment.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
