# From a clean worktree (ground.py started at ca40c8e, the rest at 702db53; ground.py, train.py and eval_sim.py are the same at both).
# The front end's stage (run first):
# python ground.py --task stack_three --out runs/ground_stack_three_natural --init-from frontends/stack_three.pt --layouts 2000 --steps 1500 --expert-frac 0.75 --grasp-natural --word-order --workers 2 --threads 1 --resume
# The recipe's 50 demonstrations (python recipe.py stack_three's first stage) in runs/exp/stack_three_natural/data.
python ground.py export --ckpt runs/ground_stack_three_natural/ckpt.pt --out runs/exp/stack_three_natural/stack_three.pt
python ground.py check --ckpt runs/exp/stack_three_natural/stack_three.pt --data runs/exp/stack_three_natural/data --steps 0 20 60 100 140 180 220 250 --out runs/exp/stack_three_natural/ground_check.json
python train.py --data runs/exp/stack_three_natural/data --out runs/exp/stack_three_natural/policy --vision-from runs/exp/stack_three_natural/stack_three.pt --resume --preset small --stage-weight 0.1 --keyframe-weight 0.1 --freeze-vision --grounded --grounded-only --shift 0 --save-every 500 --steps 6000 --symmetry --velocity --seed 0
python eval_sim.py --ckpt runs/exp/stack_three_natural/policy/ckpt.pt --task stack_three --out runs/exp/stack_three_natural/eval_seed0 --episodes 100 --noise-scale 0 --video 4 --batch 25 --seed 0 --workers 2
# stack_three: 0/100; first closes within 2 cm 6/100 (12 with the shipped front end)
