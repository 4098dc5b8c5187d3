#!/bin/bash
# Issue 33's grid, cell by cell in order of importance. Run it from a clean checkout of one commit
# so that its rows record the code that made them; OUT is this folder in the checkout that commits
# the rows. Each arm's row lands as it finishes; a rerun resumes. The 30 % uniform cell ran at
# b6d7f52; the later cells run at dd113ec, which scores PrivateTest only where it can be a result
# (--test_curve False) and gives the same rows (same_rows.py, same-rows.json).
#   git worktree add /tmp/wt dd113ec && (cd /tmp/wt && nice -n 19 bash bench/grids/noise/run.sh /work/main/bench/grids/noise)
set -u
OUT=${1:?usage: run.sh OUT_FOLDER}
G="python bench/relabel_grid.py --out $OUT --arch cnn_gap --size 1500 --public_size 2000 --private_size 3000
   --noise_splits train+val --optimizer adam --learning_rate 0.002 --weight_decay 0 --augment light
   --batch_size 64 --base_epochs 10 --relabel_epochs 30 --seeds 3 --workers ${WORKERS:-2}
   --rules control,clean,eac,smallloss,confident,confident+eac,confident+smallloss,autofernet,consensus,soft"
# The cells in order of importance. An invocation holds the folder, so cells that share a mode or a
# rate go in one call: its (mode, rate, seed) units keep both workers busy, where one cell's three
# seeds left a worker idle for the third. The rows do not depend on the grouping (each unit is
# seeded by itself).
for cell in "0.3 uniform" "0.3 ambiguous" "0.0,0.1 uniform" "0.1,0.3 ambiguous,ferplus" \
            "0.4 uniform,ambiguous,ferplus"; do
  set -- $cell
  $G --noise "$1" --modes "$2" || exit $?
done
