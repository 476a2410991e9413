# From a clean worktree of 9fa38c7 (train.py --tcp-state, reverted afterwards); the recipe's demonstrations
# (python recipe.py franka_stack's first stage: data.py generate --task franka_stack --out DATA --workers 2
# --episodes 50 --seed 0 --grasp-natural), its policy flags plus --tcp-state, its evaluation.
python train.py --data runs/exp/franka_stack_tcp/data --out runs/exp/franka_stack_tcp/policy --vision-from frontends/franka_stack.pt --resume --preset small --stage-weight 0.1 --keyframe-weight 0.1 --freeze-vision --grounded --grounded-only --shift 0 --save-every 500 --steps 6000 --symmetry --tcp-state --seed 0 --threads 1
python eval_real.py --ckpt runs/exp/franka_stack_tcp/policy/ckpt.pt --task franka_stack --out runs/exp/franka_stack_tcp/eval_seed0 --episodes 100 --noise-scale 0 --video 4 --seed 0 --robot mujoco
# franka_stack: 14/100 = 0.14, Wilson 95% [0.09, 0.22]
