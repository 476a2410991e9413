"""LeRobotDataset v3.0 in and out: our episode folders (data.py) <-> a LeRobot dataset root, on pyarrow and PyAV.

  python -m interop.lerobot export SRC_FOLDER DST [--crf 18]
  python -m interop.lerobot import SRC DST --gripper 7 --gripper-convention open-high [--state observation.state]
      [--action action] [--cameras observation.images.front=front] [--signal qpos] [--gripper-levels 0 0.08] ...

Export writes one data file and one mp4 per camera (chunk-000/file-000), as lerobot-dataset 0.4.4 does:
  meta/info.json        features: observation.state = qpos (qpos_names), action (action_names),
                        observation.images.<camera> = each camera (h264, yuv420p), and the five default columns
  meta/stats.json       min/max/mean/std/count/q01..q99 per feature (images per channel, in [0, 1])
  meta/tasks.parquet    the instructions (a LeRobot task is the instruction)
  meta/episodes/chunk-000/file-000.parquet   per episode: length, rows, video span, stats
  data/chunk-000/file-000.parquet            one row per frame
  videos/<key>/chunk-000/file-000.mp4        the episodes one after another
  meta/stake.json       ours: meta.json and each episode's task and seed, so that importing it back is exact
Import reads the features the mapping names (defaults: LeRobot's usual names, and meta/stake.json where the dataset
is one of ours) and writes a folder that `train.py --data DST` trains on. The grippers are named explicitly: which
dimensions, which convention, and how segment.py finds their events (meta.json "segment": channel, levels,
thresholds, dwell; dataset.py reads it). Details, and what round-trips exactly: docs/lerobot.md.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import data
import segment
from data import DataError, opt

try:  # optional extras: pip install -r interop/requirements.txt
    import av
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
except ImportError as _e:
    av = pa = pc = pq = None
    MISSING = _e.name

STATE, ACTION, IMAGES = "observation.state", "action", "observation.images."
DEFAULT_FEATURES = ("timestamp", "frame_index", "episode_index", "index", "task_index")
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
QUANTILES = (1, 10, 50, 90, 99)
CONVENTIONS = {"open-high": "open is high: larger = more open (SRC's units)",
               "open-low": "open is low: larger = more closed, as in 0 = open, 1 = closed (SRC's units)"}
NORMALISED = "normalised opening: 1 = open, 0 = closed (imported, scaled from --gripper-levels)"
SEGMENT_DEFAULTS = dict(signal="action", levels=None, close_below=0.6, open_above=0.8, min_dwell=3)


@dataclass
class ExportOptions:
    """python -m interop.lerobot export SRC_FOLDER DST: our episodes as a LeRobotDataset v3.0."""
    src: str = opt("", "episode folder (meta.json + episode_*.npz)", positional=True)
    dst: str = opt("", "the LeRobot dataset root to write (must not exist or be empty)", positional=True)
    crf: int = opt(18, "h264 quality, 0 (best) to 51; the pixel error of a round trip grows with it")
    gop: int = opt(2, "a keyframe every this many frames (lerobot's default 2: fast random access)")
    pix_fmt: str = opt("yuv420p", "yuv420p (lerobot's, the most players) or yuv444p (no chroma subsampling: with "
                       "--crf 0 the round trip is within 2 levels)", choices=("yuv420p", "yuv444p"))
    robot_type: str = opt("", "info.json robot_type (default: meta.json's robot)")

    def __post_init__(self):
        if not self.src or not self.dst:
            raise DataError("export: give SRC_FOLDER and DST")
        if not 0 <= self.crf <= 51 or self.gop < 1:
            raise DataError(f"--crf must be in [0, 51] and --gop >= 1; got {self.crf}, {self.gop}")


@dataclass
class ImportOptions:
    """python -m interop.lerobot import SRC DST: a LeRobotDataset v3.0 as our episodes (train.py --data DST)."""
    src: str = opt("", "LeRobot dataset root (meta/info.json, data/, videos/)", positional=True)
    dst: str = opt("", "the episode folder to write (must not exist or be empty)", positional=True)
    state: str = opt(STATE, "the feature that becomes qpos (the state)")
    action: str = opt(ACTION, "the feature that becomes the action")
    gripper: list = opt([], "gripper dimensions of the action and the state, by index or by the action's names "
                        "(default: meta/stake.json's, where the dataset is one of ours)")
    gripper_convention: str = opt("", "'open-high' (larger = more open) or 'open-low' (larger = more closed); "
                                  "default: meta/stake.json's", choices=("", "open-high", "open-low"))
    cameras: list = opt([], "VIDEO_KEY=NAME pairs (default: every video key, named by its last dotted part)")
    task: str = opt("", "task name of every episode (default: meta/stake.json's, else 'lerobot')")
    signal: str = opt("action", "the gripper channel segment.py labels: 'action' (commanded) or 'qpos' (measured)",
                      choices=("action", "qpos"))
    gripper_levels: list = opt([], "CLOSED OPEN: the gripper's levels in SRC's units (default: estimated per "
                               "episode by segment.py)")
    close_below: float = opt(0.6, "segment.py: closed below this fraction of the way from closed to open")
    open_above: float = opt(0.8, "segment.py: open above this fraction (the band between is the hysteresis)")
    min_dwell: int = opt(3, "segment.py: a state held for fewer steps is a glitch")
    normalise_gripper: bool = opt(False, "write the grippers as 1 = open, 0 = closed, scaled from --gripper-levels "
                                  "(what the policy's 0/1 gripper output and train.py's metrics expect)")

    def __post_init__(self):
        if not self.src or not self.dst:
            raise DataError("import: give SRC and DST")
        try:
            self.gripper_levels = [float(x) for x in self.gripper_levels]
        except ValueError:
            raise DataError(f"--gripper-levels: not numbers: {self.gripper_levels}") from None
        if len(self.gripper_levels) not in (0, 2):
            raise DataError(f"--gripper-levels: give CLOSED OPEN (two numbers), got {self.gripper_levels}")
        if self.normalise_gripper and not self.gripper_levels:
            raise DataError("--normalise-gripper needs --gripper-levels CLOSED OPEN")


# ----------------------------------------------------------------------------- small helpers

def _need_extras():
    if pa is None:
        raise DataError(f"{MISSING} is not installed: pip install -r interop/requirements.txt")


def _new_folder(dst: Path) -> Path:
    """A temporary folder beside dst, renamed onto it when complete: a user's folder is never written into."""
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise DataError(f"{dst}: exists and is not an empty folder; choose a new one")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def _finish(tmp: Path, dst: Path) -> None:
    if dst.is_dir():
        dst.rmdir()  # empty, checked in _new_folder
    os.replace(tmp, dst)


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=4) + "\n")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: missing (is {path.parents[1]} a LeRobot v3.0 dataset root?)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


def stats(x: np.ndarray) -> dict:
    """LeRobot's per-feature statistics of x (N, D): each a list of D numbers (count: [N])."""
    x = np.asarray(x, np.float64)
    q = np.percentile(x, QUANTILES, axis=0)                                         # (5, D)
    return dict(min=x.min(0).tolist(), max=x.max(0).tolist(), mean=x.mean(0).tolist(), std=x.std(0).tolist(),
                count=[len(x)], **{f"q{p:02d}": v.tolist() for p, v in zip(QUANTILES, q)})


def image_stats(images: np.ndarray) -> dict:
    """images (T, H, W, 3) uint8 -> per-channel statistics in [0, 1], shaped (3, 1, 1) as LeRobot's (at most
    ~100 frames of an episode, as lerobot samples them)."""
    sub = images[::max(1, len(images) // 100)].reshape(-1, 3) / 255.0               # (n, 3)
    return {k: v if k == "count" else [[[c]] for c in v] for k, v in stats(sub).items()} | {"count": [len(images)]}


def aggregate(per_episode: list) -> dict:
    """The dataset's statistics from its episodes': extremes, count-weighted means (quantiles too, as lerobot
    does) and the pooled std."""
    n = np.array([s["count"][0] for s in per_episode], np.float64)
    w = n / n.sum()
    get = lambda k: np.array([s[k] for s in per_episode], np.float64)               # (E, ...)
    wsum = lambda x: np.tensordot(w, x, 1)
    mean = wsum(get("mean"))
    var = wsum(get("std") ** 2 + (get("mean") - mean) ** 2)
    out = dict(min=get("min").min(0), max=get("max").max(0), mean=mean, std=np.sqrt(var))
    out |= {f"q{p:02d}": wsum(get(f"q{p:02d}")) for p in QUANTILES}
    return {k: v.tolist() for k, v in out.items()} | {"count": [int(n.sum())]}


# ----------------------------------------------------------------------------- export

def export(o: ExportOptions) -> dict:
    """Write the episode folder o.src as a LeRobotDataset v3.0 at o.dst; returns info.json."""
    _need_extras()
    src, dst = Path(o.src), Path(o.dst)
    meta, paths = data.load_meta(src), data.episode_paths(src)
    if not paths:
        raise DataError(f"{src}: no episode_*.npz files")
    fps, (H, W), cams = meta["fps"], meta["image_size"], list(meta["cameras"])
    if int(fps) != fps:
        raise DataError(f"{src}/meta.json: fps {fps} is not a whole number (LeRobot's fps is an int)")
    if cams and o.pix_fmt == "yuv420p" and (H % 2 or W % 2):
        raise DataError(f"{src}/meta.json: image_size {H}x{W}: yuv420p video needs even sizes")
    Dq, A = len(meta["qpos_names"]), len(meta["action_names"])
    tmp = _new_folder(dst)
    try:
        keys = [IMAGES + c for c in cams]
        schema = pa.schema([(STATE, pa.list_(pa.float32(), Dq)), (ACTION, pa.list_(pa.float32(), A)),
                            ("timestamp", pa.float32())] + [(k, pa.int64()) for k in DEFAULT_FEATURES[1:]])
        (tmp / "data/chunk-000").mkdir(parents=True)
        writer = pq.ParquetWriter(tmp / DATA_PATH.format(chunk_index=0, file_index=0), schema)
        videos = {k: open_video(tmp / VIDEO_PATH.format(video_key=k, chunk_index=0, file_index=0), int(fps), H, W, o)
                  for k in keys}
        tasks, rows, ep_stats, stake_eps, n = {}, [], [], [], 0
        for e, p in enumerate(paths):
            ep = data.load_episode(p)
            T = len(ep["action"])
            if ep["action"].shape[1] != A or ep["qpos"].shape[1] != Dq:
                raise DataError(f"{p}: action/qpos have {ep['action'].shape[1]}/{ep['qpos'].shape[1]} dims, "
                                f"meta.json names {A}/{Dq}")
            ti = tasks.setdefault(ep["instruction"], len(tasks))
            frame = np.arange(T)
            cols = {"timestamp": (frame / fps).astype(np.float32), "frame_index": frame,
                    "episode_index": np.full(T, e), "index": n + frame, "task_index": np.full(T, ti)}
            table = pa.table({STATE: pa.FixedSizeListArray.from_arrays(pa.array(ep["qpos"].ravel()), Dq),
                              ACTION: pa.FixedSizeListArray.from_arrays(pa.array(ep["action"].ravel()), A),
                              **{k: pa.array(v) for k, v in cols.items()}}, schema=schema)
            writer.write_table(table)
            st_e = {STATE: stats(ep["qpos"]), ACTION: stats(ep["action"])} | {
                k: stats(v[:, None]) for k, v in cols.items()}
            row = {"episode_index": e, "tasks": [ep["instruction"]], "length": T, "data/chunk_index": 0,
                   "data/file_index": 0, "dataset_from_index": n, "dataset_to_index": n + T}
            for c, k in zip(cams, keys):
                img = ep["images"].get(c)
                if img is None or img.shape[1:3] != (H, W):
                    raise DataError(f"{p}: needs images/{c} of size {H}x{W} (meta.json image_size)")
                box, st = videos[k]
                for f in img:
                    box.mux(st.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
                st_e[k] = image_stats(img)
                row |= {f"videos/{k}/chunk_index": 0, f"videos/{k}/file_index": 0,
                        f"videos/{k}/from_timestamp": n / fps, f"videos/{k}/to_timestamp": (n + T) / fps}
            row |= {f"stats/{k}/{s}": v for k, d in st_e.items() for s, v in d.items()}
            rows.append(row | {"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
            ep_stats.append(st_e)
            stake_eps.append({"task": ep["task"], "seed": ep["seed"]})
            n += T
        writer.close()
        for box, st in videos.values():
            box.mux(st.encode())  # flush
            box.close()
        pq.write_table(pa.Table.from_pylist(rows), _mkdir(tmp / "meta/episodes/chunk-000") / "file-000.parquet")
        pq.write_table(tasks_table(list(tasks)), tmp / "meta/tasks.parquet")
        _write_json(tmp / "meta/stats.json", {k: aggregate([s[k] for s in ep_stats]) for k in ep_stats[0]})
        info = dict(codebase_version="v3.0", robot_type=o.robot_type or meta.get("robot") or None,
                    total_episodes=len(paths), total_frames=n, total_tasks=len(tasks), chunks_size=1000,
                    data_files_size_in_mb=100, video_files_size_in_mb=200, fps=int(fps),
                    splits={"train": f"0:{len(paths)}"}, data_path=DATA_PATH, video_path=VIDEO_PATH if keys else None,
                    features=features_of(meta, keys, int(fps), o.pix_fmt))
        _write_json(tmp / "meta/info.json", info)
        _write_json(tmp / "meta/stake.json", {"meta": meta, "episodes": stake_eps})
        _finish(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


def open_video(path: Path, fps: int, H: int, W: int, o: ExportOptions) -> tuple:
    """(container, stream) of a new h264 mp4, encoded as lerobot-dataset encodes (its options g and crf)."""
    path.parent.mkdir(parents=True)
    box = av.open(str(path), "w")
    st = box.add_stream("h264", rate=fps, options={"g": str(o.gop), "crf": str(o.crf)})
    st.pix_fmt, st.width, st.height = o.pix_fmt, W, H
    return box, st


def features_of(meta: dict, keys: list, fps: int, pix_fmt: str) -> dict:
    """info.json's features: the state, the action, one video per camera, and LeRobot's five default columns."""
    (H, W), out = meta["image_size"], {
        STATE: dict(dtype="float32", shape=[len(meta["qpos_names"])], names=list(meta["qpos_names"])),
        ACTION: dict(dtype="float32", shape=[len(meta["action_names"])], names=list(meta["action_names"]))}
    for k in keys:
        out[k] = dict(dtype="video", shape=[H, W, 3], names=["height", "width", "channels"], info={
            "video.height": H, "video.width": W, "video.codec": "h264", "video.pix_fmt": pix_fmt,
            "video.is_depth_map": False, "video.fps": fps, "video.channels": 3, "has_audio": False})
    out["timestamp"] = dict(dtype="float32", shape=[1], names=None)
    return out | {k: dict(dtype="int64", shape=[1], names=None) for k in DEFAULT_FEATURES[1:]}


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def tasks_table(tasks: list) -> "pa.Table":
    """meta/tasks.parquet: the task strings as a pandas index named `task`, one column `task_index` (pandas'
    metadata written by hand: pandas itself is not needed)."""
    pandas_meta = {"index_columns": ["task"], "column_indexes": [], "columns": [
        {"name": "task_index", "field_name": "task_index", "pandas_type": "int64", "numpy_type": "int64",
         "metadata": None},
        {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object", "metadata": None}],
        "creator": {"library": "pyarrow", "version": pa.__version__}, "pandas_version": "2.2.0"}
    t = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()), "task": pa.array(tasks, pa.string())})
    return t.replace_schema_metadata({"pandas": json.dumps(pandas_meta)})


# ----------------------------------------------------------------------------- import

def read_tasks(src: Path) -> dict:
    """task_index -> task string, from meta/tasks.parquet (the strings are its one string column: the pandas index,
    named `task` or `__index_level_0__`)."""
    path = src / "meta/tasks.parquet"
    if not path.is_file():
        raise DataError(f"{path}: missing")
    t = pq.read_table(path)
    text = [c for c, f in zip(t.column_names, t.schema) if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    if "task_index" not in t.column_names or len(text) != 1:
        raise DataError(f"{path}: expected a column 'task_index' and one string column; has {t.column_names}")
    return dict(zip(t["task_index"].to_pylist(), t[text[0]].to_pylist()))


def read_episodes(src: Path) -> list:
    """meta/episodes/*/*.parquet without the stats columns, one dict per episode, by episode_index."""
    paths = sorted((src / "meta/episodes").glob("*/*.parquet"))
    if not paths:
        raise DataError(f"{src}/meta/episodes: no parquet files")
    rows = []
    for p in paths:
        rows += pq.read_table(p, columns=[c for c in pq.read_schema(p).names if not c.startswith("stats/")]).to_pylist()
    return sorted(rows, key=lambda r: r["episode_index"])


def _matrix(column, n: int, dims: int, where: str) -> np.ndarray:
    """A parquet column of n rows of `dims` numbers (lists, or scalars where dims is 1) -> (n, dims) float32."""
    col = column.combine_chunks()
    if pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) or pa.types.is_large_list(col.type):
        col = col.flatten()
    x = col.to_numpy(zero_copy_only=False)
    if x.size != n * dims:
        raise DataError(f"{where}: {x.size} numbers where {n} rows of {dims} were expected")
    return x.reshape(n, dims).astype(np.float32)


def decode(path: Path, start: float, n: int, fps: float) -> np.ndarray:
    """(n, H, W, 3) uint8: the n frames of `path` from time `start` (s); DataError where frames are missing."""
    out = []
    try:
        with av.open(str(path)) as box:
            st = box.streams.video[0]
            if start > 0:
                box.seek(int(start / st.time_base), stream=st, backward=True)
            for f in box.decode(st):
                k = round((f.time - start) * fps)
                if k < 0:
                    continue
                if k >= n:
                    break
                if k != len(out):
                    raise DataError(f"{path}: frame at {f.time:.4f} s is frame {k} of the episode from {start:.4f} s; "
                                    f"expected frame {len(out)} (a missing or repeated frame)")
                out.append(f.to_ndarray(format="rgb24"))
    except (av.error.FFmpegError, OSError) as e:
        raise DataError(f"{path}: cannot be decoded ({e})") from None
    if len(out) != n:
        raise DataError(f"{path}: {len(out)} frames from {start:.4f} s where the episode has {n} rows")
    return np.stack(out)


def _names(feature: dict, key: str) -> list:
    """A feature's dimension names: a list, a dict of lists (lerobot's {"motors": [...]}), or None."""
    names, dims = feature.get("names"), int(np.prod(feature["shape"]))
    if isinstance(names, dict):
        names = [x for v in names.values() for x in v]
    return [str(x) for x in names] if names and len(names) == dims else [f"{key}_{i}" for i in range(dims)]


def _gripper_indices(given: list, names: list, where: str) -> list:
    out = []
    for g in given:
        g = str(g)
        if g.lstrip("-").isdigit():
            i = int(g)
        elif g in names:
            i = names.index(g)
        else:
            raise DataError(f"--gripper {g}: not an index nor a name of {where} ({names})")
        if not 0 <= i < len(names):
            raise DataError(f"--gripper {g}: {where} has {len(names)} dimensions")
        out.append(i)
    return out


def import_meta(o: ImportOptions, src: Path, info: dict, stake) -> tuple:
    """(our meta.json, {video key: camera}) from the mapping the options give; `stake`: meta/stake.json, where
    the dataset is one of ours (its meta, and the defaults of the gripper and its convention)."""
    feats, fps = info["features"], info["fps"]
    for k in (o.state, o.action):
        if k not in feats or feats[k]["dtype"] in ("video", "image", "string"):
            raise DataError(f"{src}/meta/info.json: no numeric feature '{k}' (has {sorted(feats)})")
    qnames, anames = _names(feats[o.state], o.state), _names(feats[o.action], o.action)
    if stake is None and not (o.gripper and o.gripper_convention):
        raise DataError(f"{src} is not one of our exports (no meta/stake.json): give --gripper and "
                        f"--gripper-convention (open-high: larger = more open, or open-low)")
    gi = _gripper_indices(o.gripper, anames, o.action) if o.gripper else stake["meta"]["gripper_indices"]
    if bad := [i for i in gi if i >= len(qnames)]:
        raise DataError(f"--gripper {bad}: the state '{o.state}' has {len(qnames)} dimensions; our format keeps the "
                        f"grippers at the same index in state and action")
    video_keys = [k for k, f in feats.items() if f["dtype"] == "video"]
    pairs = [c.split("=", 1) for c in o.cameras] if o.cameras else [(k, k.split(".")[-1]) for k in video_keys]
    for pair in pairs:
        if len(pair) != 2 or pair[0] not in video_keys:
            raise DataError(f"--cameras {'='.join(pair)}: give VIDEO_KEY=NAME with a video key of {video_keys}")
    cams = dict(pairs)
    if len(set(cams.values())) != len(cams):
        raise DataError(f"--cameras: camera names must differ, got {list(cams.values())}")
    sizes = {tuple(feats[k]["shape"][:2]) for k in cams}
    if len(sizes) > 1:
        raise DataError(f"cameras {list(cams)} differ in size {sorted(sizes)}; our format has one image_size "
                        f"(choose a subset with --cameras)")
    H, W = sizes.pop() if sizes else (0, 0)
    base = stake["meta"] if stake else {"format_version": 1, "robot": info.get("robot_type") or "", "tasks": {
        o.task or "lerobot": {"description": f"imported from the LeRobot dataset {src.name}"}}}
    meta = base | dict(fps=base["fps"] if base.get("fps") == fps else fps, action_names=anames, qpos_names=qnames,
                       gripper_indices=gi, cameras=list(cams.values()), image_size=[H, W])
    high = o.gripper_convention != "open-low" if o.gripper_convention else segment.open_is_high(base["gripper_convention"])
    levels = o.gripper_levels or None
    if levels and (levels[1] > levels[0]) != high:
        raise DataError(f"--gripper-levels {levels} (closed, open) contradict the convention (open is "
                        f"{'high' if high else 'low'})")
    meta["gripper_convention"] = (NORMALISED if o.normalise_gripper else CONVENTIONS[o.gripper_convention]
                                  if o.gripper_convention else base["gripper_convention"])
    seg = dict(SEGMENT_DEFAULTS, signal=o.signal, levels=[0.0, 1.0] if o.normalise_gripper else levels,
               close_below=o.close_below, open_above=o.open_above, min_dwell=o.min_dwell)
    if stake is None or seg != SEGMENT_DEFAULTS:  # ours keep their meta as it was, unless told otherwise
        meta["segment"] = seg
    if o.task and stake:
        meta["tasks"] = {o.task: next(iter(base["tasks"].values()), {})}
    return meta, cams


def read_episode(src: Path, info: dict, ep: dict, o: ImportOptions, cams: dict, cache: dict) -> tuple:
    """(qpos (T, Dq), action (T, A), {camera: (T, H, W, 3) uint8}, task_index) of one row of meta/episodes; `cache`
    holds the last data file read (episodes are stored in order, many to a file)."""
    e, T = ep["episode_index"], ep["length"]
    path = src / info["data_path"].format(chunk_index=ep["data/chunk_index"], file_index=ep["data/file_index"])
    if path not in cache:
        if not path.is_file():
            raise DataError(f"{path}: missing (episode {e})")
        cache.clear()
        cache[path] = pq.read_table(path, columns=[o.state, o.action, "episode_index", "frame_index", "task_index"])
    rows = cache[path].filter(pc.equal(cache[path]["episode_index"], e))
    if len(rows) != T:
        raise DataError(f"{path}: episode {e} has {len(rows)} rows, meta/episodes says length {T}")
    order, where = np.argsort(rows["frame_index"].to_numpy(), kind="stable"), f"{path} (episode {e})"
    dims = lambda k: int(np.prod(info["features"][k]["shape"]))
    qpos = _matrix(rows[o.state], T, dims(o.state), f"{where} '{o.state}'")[order]
    action = _matrix(rows[o.action], T, dims(o.action), f"{where} '{o.action}'")[order]
    for name, x in ((o.state, qpos), (o.action, action)):
        if not np.isfinite(x).all():
            raise DataError(f"{where}: '{name}' holds NaN or inf")
    images = {name: decode(src / info["video_path"].format(
        video_key=k, chunk_index=ep[f"videos/{k}/chunk_index"], file_index=ep[f"videos/{k}/file_index"]),
        ep[f"videos/{k}/from_timestamp"], T, info["fps"]) for k, name in cams.items()}
    return qpos, action, images, rows["task_index"][0].as_py()


def import_dataset(o: ImportOptions) -> dict:
    """Write the LeRobot v3.0 dataset o.src as an episode folder at o.dst; returns a summary."""
    _need_extras()
    src, dst = Path(o.src), Path(o.dst)
    info = _read_json(src / "meta/info.json")
    if info.get("codebase_version") != "v3.0":
        raise DataError(f"{src}/meta/info.json: codebase_version {info.get('codebase_version')!r}; only v3.0 is read "
                        f"(lerobot's convert_dataset_v21_to_v30 converts older ones)")
    stake = _read_json(src / "meta/stake.json") if (src / "meta/stake.json").is_file() else None
    meta, cams = import_meta(o, src, info, stake)
    signal, seg_kw = segment.settings(meta)
    gi = meta["gripper_indices"]
    episodes, tasks = read_episodes(src), read_tasks(src)
    tmp = _new_folder(dst)
    try:
        cache, events, frames = {}, Counter(), 0
        for i, ep in enumerate(episodes):
            qpos, action, images, task_index = read_episode(src, info, ep, o, cams, cache)
            if o.normalise_gripper:  # (x - closed) / (open - closed): 1 = open, 0 = closed
                c, op = o.gripper_levels
                qpos[:, gi], action[:, gi] = (qpos[:, gi] - c) / (op - c), (action[:, gi] - c) / (op - c)
            try:
                events[segment.segment((action if signal == "action" else qpos)[:, gi], **seg_kw).count()] += 1
            except ValueError as err:
                raise DataError(f"{src}: episode {ep['episode_index']}: segment.py: {err}") from None
            ours = stake["episodes"][i] if stake else {"task": "lerobot", "seed": ep["episode_index"]}
            data.save_episode(tmp / f"episode_{i:06d}.npz", dict(
                images=images, qpos=qpos, action=action, instruction=(ep.get("tasks") or [tasks[task_index]])[0],
                task=o.task or ours["task"], seed=ours["seed"]))
            frames += len(action)
        data.save_meta(tmp, meta)
        _finish(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dict(episodes=len(episodes), frames=frames, cameras=cams, gripper_indices=gi,
                gripper_convention=meta["gripper_convention"], segment=meta.get("segment"),
                events_per_episode=dict(sorted(events.items())))


# ----------------------------------------------------------------------------- CLI

def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cmd, rest, prog = (argv[:1] or [""])[0], argv[1:], "python -m interop.lerobot"
    try:
        if cmd == "export":
            o = data.parse_options(ExportOptions, rest, f"{prog} export", ExportOptions.__doc__)
            info = export(o)
            print(f"{o.dst}: {info['total_episodes']} episodes, {info['total_frames']} frames, "
                  f"{info['total_tasks']} tasks, videos {[k for k in info['features'] if k.startswith(IMAGES)]}")
        elif cmd == "import":
            o = data.parse_options(ImportOptions, rest, f"{prog} import", ImportOptions.__doc__)
            s = import_dataset(o)
            print(f"{o.dst}: {s['episodes']} episodes, {s['frames']} frames, cameras {s['cameras']}, grippers "
                  f"{s['gripper_indices']} ({s['gripper_convention']}); gripper events per episode: "
                  + ", ".join(f"{k} in {v}" for k, v in s["events_per_episode"].items()))
        else:
            print(__doc__.strip())
            return 0 if cmd in ("-h", "--help") else 2
    except (DataError, ValueError, OSError) as e:
        print(f"interop.lerobot: error: {e}", file=sys.stderr)
        return 2
    except KeyError as e:  # a LeRobot metadata file without a key this reads
        print(f"interop.lerobot: error: {rest[0] if rest else ''}: the dataset's metadata has no key {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
