"""End-effector actions (train.py --action-space ee): the policy predicts each arm's tool-centre-point pose and
gripper command instead of joint targets, and `Policy` turns every predicted chunk back into joint targets with
the same damped least-squares IK the scripted experts use (sim.solve_ik), warm-started from the measured joints.

Why (deviation from pi0, which predicts joint targets): with 50 demonstrations a from-scratch policy has to learn
inverse kinematics from 50 grasps, and on lift_block it succeeds on 42-47 of its 50 training layouts but on
about half of new ones (README). In tcp space the grasp is the object's position plus an offset, which the
grounded object positions give almost directly. The robot still receives joint targets through the same
evaluation loop, limits and caps; only the policy's output (and the StaKe keyframe target) changes space.
Measured (README, Status): on lift_block it does not beat joint targets (110 against 120 of 200 evaluation
seeds), and the object frame and relative chunks below do worse (83, 82); on the twin 5 of 50 against 23.

Per arm, in the suite's arm order, 10 numbers: tcp position (3, m, world frame), the first two columns of the
tcp rotation matrix (6; the continuous 6-D rotation of Zhou et al. 2019), the gripper command. The state gets
the same 9 pose numbers of the measured joints appended to the joint state.
"""
from __future__ import annotations

import mujoco
import numpy as np
import torch

import sim

POSE = 9  # per arm: tcp position 3, rotation columns 6
PER_ARM = POSE + 1  # and the gripper


def suite_of_robot(robot: str):
    suite = next((s for s in sim.suites() if s.ROBOT == robot), None)
    if suite is None:
        raise ValueError(f"--action-space ee needs the kinematics of a simulated robot "
                         f"({', '.join(s.ROBOT for s in sim.suites())}); the data's robot is '{robot}'")
    return suite


def rotation_from_columns(c: np.ndarray) -> np.ndarray:
    """(6,) two (possibly noisy) columns -> the nearest-by-Gram-Schmidt rotation matrix (3, 3)."""
    a = c[:3] / (np.linalg.norm(c[:3]) + 1e-9)
    b = c[3:] - (a @ c[3:]) * a
    b = b / (np.linalg.norm(b) + 1e-9)
    return np.column_stack([a, b, np.cross(a, b)])


class Kinematics:
    """Forward and inverse kinematics of one robot's arms on a scratch copy of its MuJoCo model."""

    def __init__(self, robot: str):
        suite = suite_of_robot(robot)
        self.env = suite.Env(next(iter(suite.TASKS)), cameras=(), render=False)  # any task: the arms are the same
        self.arms, self.gripper = list(suite.ARMS), list(suite.GRIPPER_INDICES)
        starts = [0] + [g + 1 for g in self.gripper[:-1]]
        self.joints = [np.arange(s, g) for s, g in zip(starts, self.gripper)]  # each arm's joint indices
        self.dim = PER_ARM * len(self.arms)
        self.names = [f"{a}_{n}" for a in self.arms for n in ("x", "y", "z", "r00", "r10", "r20", "r01", "r11",
                                                             "r21", "gripper")]

    def pose(self, q: np.ndarray) -> np.ndarray:
        """(N, Dq) joint vectors (qpos or action layout) -> (N, arms, 9) tcp position and rotation columns."""
        q = np.asarray(q, np.float64)
        env, d = self.env, self.env._ik_data
        out = np.empty((len(q), len(self.arms), 9))
        for n, row in enumerate(q):
            for k, a in enumerate(self.arms):
                d.qpos[env.arm_qadr[a]] = row[self.joints[k]]
            mujoco.mj_kinematics(env.model, d)
            for k, a in enumerate(self.arms):
                R = d.site_xmat[env.tcp[a]].reshape(3, 3)
                out[n, k] = np.r_[d.site_xpos[env.tcp[a]], R[:, 0], R[:, 1]]
        return out

    def to_ee(self, q: np.ndarray) -> np.ndarray:
        """(N, Dq) joint actions -> (N, 10 * arms) end-effector actions (the gripper command is kept)."""
        q = np.asarray(q)
        grip = q[:, self.gripper][:, :, None]                                        # (N, arms, 1)
        return np.concatenate([self.pose(q), grip], 2).reshape(len(q), self.dim).astype(np.float32)

    def state(self, qpos: np.ndarray) -> np.ndarray:
        """(N, Dq) measured joints -> (N, Dq + 9 * arms): the joint state with its tcp poses appended."""
        qpos = np.asarray(qpos)
        return np.concatenate([qpos, self.pose(qpos).reshape(len(qpos), -1)], 1).astype(np.float32)

    def to_joints(self, ee: np.ndarray, qpos: np.ndarray, iters: int = 30) -> np.ndarray:
        """(H, 10 * arms) end-effector chunk, (Dq,) measured joints -> (H, Dq) joint targets: IK step by step,
        each warm-started from the previous target (the first from the measured joints), as the experts do."""
        ee = np.asarray(ee, np.float64).reshape(len(ee), len(self.arms), PER_ARM)
        out = np.empty((len(ee), len(qpos)), np.float32)
        for k, a in enumerate(self.arms):
            q = np.asarray(qpos, np.float64)[self.joints[k]]
            for h in range(len(ee)):
                q = sim.solve_ik(self.env, a, ee[h, k, :3], rotation_from_columns(ee[h, k, 3:9]), q, iters=iters)
                out[h, self.joints[k]] = q
                out[h, self.gripper[k]] = ee[h, k, 9]
        return out


# --object-frame (train.py): positions relative to one grounded object --------------------------------------------
# With --grounded the policy is told where the instruction's objects are, in world coordinates. Predicting a
# grasp then means reproducing that position in the output, which 50 demonstrations teach only roughly (on
# lift_block the grasp position follows the block with a slope of 0.85-1.0 and 2-3 cm of scatter; README).
# In the object's frame the grasp is the same small offset for every layout: each arm's tcp (x, y), in the state
# and in the actions, is taken relative to the grounded (x, y) of one named object, as the frozen grounding head
# reports it for the chunk's first frame, and the Policy adds that position back. z and rotation stay absolute.
# The joint angles leave the state: they give away the absolute layout the frame is meant to hide.

def object_state(state, ref, dq: int, gripper):
    """torch (B, Dq + 9 arms) joints + tcp poses (Kinematics.state), ref (B, 2) metres ->
    (B, arms + 9 arms): the gripper openings, then each arm's pose with its (x, y) relative to ref."""
    pose = state[:, dq:].unflatten(1, (len(gripper), 9)).clone()                   # (B, arms, 9)
    pose[..., :2] -= ref[:, None]
    return torch.cat([state[:, list(gripper)], pose.flatten(1)], 1)


def object_actions(actions, ref, sign: float = -1.0):
    """torch (..., 10 arms) tcp actions, ref (B, 2) with B the first dim -> (x, y) of every arm + sign * ref
    (sign -1: into the object's frame; +1: back to the world)."""
    a = actions.unflatten(-1, (-1, PER_ARM)).clone()                               # (..., arms, 10)
    r = ref.reshape(ref.shape[0], *([1] * (a.dim() - 2)), 2)
    a[..., :2] += sign * r
    return a.flatten(-2)



# --relative (train.py): each chunk's tcp positions relative to the measured tcp at its first frame ---------------
# Normalised by the spread of whole-workspace positions (about 20 cm), a flow's output error of a few hundredths of a
# standard deviation is a centimetre at the grasp, and a 4 cm block tolerates about 1.5 cm (README). Relative to
# where the tcp is now, a chunk spans only the motion of one second, so the same error is smaller in metres.

def relative_actions(actions, state, dq: int, sign: float = -1.0):
    """torch (B, ..., 10 arms) tcp actions, (B, Dq + 9 arms) state (Kinematics.state) -> each arm's position
    + sign * its measured tcp position (sign -1: relative to it; +1: back to the world)."""
    tcp = state[:, dq:].unflatten(1, (-1, 9))[..., :3]                             # (B, arms, 3)
    a = actions.unflatten(-1, (-1, PER_ARM)).clone()                               # (B, ..., arms, 10)
    a[..., :3] += sign * tcp.reshape(tcp.shape[0], *([1] * (a.dim() - 3)), *tcp.shape[1:])
    return a.flatten(-2)
