#!/bin/sh
# the --object-tokens runs on the other tasks, one at a time (run in a clean worktree at 8c63bd9)
cd "$(dirname "$0")/../.."
mkdir -p runs/exp
run() { # task evaluator extra-train-flags...
  t=$1; ev=$2; shift 2
  python data.py generate --task $t --out runs/exp/$t/data --workers 2 --episodes 50 --seed 0 --grasp-natural > runs/exp/$t.log 2>&1
  python train.py --data runs/exp/$t/data --out runs/exp/$t/policy --vision-from frontends/$t.pt --resume --preset small --stage-weight 0.1 --keyframe-weight 0.1 --freeze-vision --grounded --grounded-only --shift 0 --save-every 500 --steps 6000 "$@" --object-tokens --seed 0 >> runs/exp/$t.log 2>&1
  if [ $ev = sim ]; then
    python eval_sim.py --ckpt runs/exp/$t/policy/ckpt.pt --task $t --out runs/exp/$t/exp_object_tokens --episodes 100 --noise-scale 0 --video 0 --batch 25 --seed 0 --workers 2 >> runs/exp/$t.log 2>&1
  else
    python eval_real.py --ckpt runs/exp/$t/policy/ckpt.pt --task $t --out runs/exp/$t/exp_object_tokens --episodes 100 --noise-scale 0 --video 0 --seed 0 --robot mujoco >> runs/exp/$t.log 2>&1
  fi
  echo "$t done $(date)" >> runs/exp/done.txt
}
run handover sim --velocity
run franka_put_in_bin real --symmetry
run stack_three sim --symmetry --velocity
run franka_stack real --symmetry
