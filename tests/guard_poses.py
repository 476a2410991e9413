"""Arm poses for the workspace guard's tests (tests/test_eval_real.py with fakes and the twin,
tests/test_franky_sim.py against franky-sim)."""
import numpy as np

from robot import franka


def down_pose(x, z, q):
    """Joints 2, 4 and 6 of q (Newton from q) put the TCP at (x, 0, z) m with the hand pointing straight down."""
    q, idx = np.array(q, float), [1, 3, 5]

    def err(q):
        T = franka.flange_pose(q)
        p = T[:3, 3] + T[:3, 2] * franka.TCP_OFFSET
        return np.array([p[0] - x, p[2] - z, T[0, 2]])
    for _ in range(50):
        e = err(q)
        if np.abs(e).max() < 1e-10:
            break
        J = np.column_stack([(err(q + 1e-6 * np.eye(7)[i]) - e) / 1e-6 for i in idx])
        q[idx] -= np.linalg.solve(J, e)
    return q


def lowest_fingertip(q) -> float:
    g = franka.guard_points(q)
    return min(g["finger_a"][2], g["finger_b"][2])
