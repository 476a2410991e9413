"""Where franka_stack's place goes wrong: eval_real.py --robot mujoco with a record of the last step the top block
was held (its offset from the tcp, the tcp's from the base, the front end's error on both blocks) and the final
state. A diagnostic, not part of the pipeline: it wraps the evaluator's functions and changes no behaviour.

    python results/recipes/franka_stack/diag_place/diag_place.py --ckpt CKPT --task franka_stack --out DIR \
        --episodes 100 --noise-scale 0 --video 0 --seed 0 --robot mujoco
    python results/recipes/franka_stack/diag_place/diag_place.py --summarize DIR   # -> DIR/summary.json
"""
import json, sys
from pathlib import Path
import numpy as np
sys.path.insert(0, str(Path(__file__).resolve().parents[4]))
import eval_real, eval_sim
from world import twin

EST = {}                                   # the front end's last estimate, metres: roles sorted (block0, block1)
apply = twin.FrankaEnv.apply


def apply_and_record(self, action):
    apply(self, action)
    top, base = self.obj_pos(self.layout.roles["block1"]), self.obj_pos(self.layout.roles["block0"])
    if self.grasped_by(self.layout.roles["block1"]) and "xy" in EST:
        tcp, est = self.tcp_pos(self.arms[0]), EST["xy"]
        self._held = {"grasp_offset": top[:2] - tcp[:2], "tcp_minus_base": tcp[:2] - base[:2],
                      "base_est_err": est[:2] - base[:2], "top_est_err": est[2:4] - top[:2]}


def load_policy(o):
    p = load(o)
    mu, sd = np.array(p.model.cfg.ground_mean), np.array(p.model.cfg.ground_std)
    p.model.ground_head.register_forward_hook(lambda m, i, out: EST.update(xy=out[0].float().cpu().numpy() * sd + mu))
    return p


def record(env, seed, ins, actions, gi):
    r = episode_record(env, seed, ins, actions, gi)
    top, base = env.obj_pos(env.layout.roles["block1"]), env.obj_pos(env.layout.roles["block0"])
    r["final_xy_cm"], r["final_dz_cm"] = 100 * float(np.linalg.norm(top[:2] - base[:2])), 100 * float(top[2] - base[2])
    r["held_cm"] = {k: (100 * v).round(2).tolist() for k, v in getattr(env, "_held", {}).items()}
    env._held = {}
    return r


def summarize(folder: str) -> dict:
    eps = json.loads((Path(folder) / "results.json").read_text())["tasks"]["franka_stack"]["per_episode"]
    groups = {"success": [e for e in eps if e["success"]],
              "failed after the transfer": [e for e in eps if not e["success"] and e["held_cm"]
                                            and e["furthest_stage"] in ("transfer_block1", "place_block1")]}
    out = {}
    for name, g in groups.items():
        q = lambda v: np.percentile(np.linalg.norm(np.array(v), axis=1), (25, 50, 75)).round(2).tolist()
        out[name] = {"n": len(g), "final_xy_cm": np.percentile([e["final_xy_cm"] for e in g], (25, 50, 75)).round(2).tolist(),
                     "final_on_top": sum(abs(e["final_dz_cm"] - 4.0) < 1.0 for e in g),
                     **{f"{k}_quartiles": q([e["held_cm"][k] for e in g]) for k in g[0]["held_cm"]},
                     "tcp_minus_estimated_base_quartiles": q([np.subtract(e["held_cm"]["tcp_minus_base"], e["held_cm"]["base_est_err"]) for e in g])}
    (Path(folder) / "summary.json").write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["--summarize"]:
        print(json.dumps(summarize(sys.argv[2]), indent=1))
        sys.exit(0)
    load, episode_record = eval_real.load_policy, eval_sim.episode_record
    twin.FrankaEnv.apply, eval_real.load_policy, eval_sim.episode_record = apply_and_record, load_policy, record
    sys.exit(eval_real.main(sys.argv[1:]))
