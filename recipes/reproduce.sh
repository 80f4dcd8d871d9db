#!/usr/bin/env bash
# Reproduce the paper's comparison on the embedded default model (SmolLM2-135M-Instruct) and the built-in task suite
# (issue 17's measurement), on CPU:
#
#   bash .ci/install && bash recipes/reproduce.sh
#
#   1. validation: every static candidate on 504 validation problems, 8 samples each; BEST, BEST@k and the best
#      candidate of each task family are chosen there (recipes/configs/suite_validation.yaml);
#   2. train five adapters on the training split: token level with and without the token budget, the entropy-only
#      token ablation, and sequence level with and without the parallel budget (recipes/configs/reproduce/);
#   3. test: the adapters against BEST, BEST@k, family-best and the per-problem oracle on 1,008 test problems, paired
#      by problem (summary.json, the paper's Tables 1 and 5, plots);
#   4. generalisation: the same on two task families never trained or selected on, and the token adapters at a
#      token budget outside their training range (96);
#   5. copy the adapters into model_cards/<name>/ with their model cards, and the results into recipes/results/.
#
# Resumable: every step that finished is skipped (a marker in outputs/reproduce/), a training step continues from
# its newest checkpoint, and is skipped when its adapter is finished in recipes/results/reproduce/adapters/ (where
# the adapters are trained, so that they are committed as they finish and the run can span sessions; delete a folder
# to train that adapter again), evaluations reuse what they cached: the static candidates' outcomes are cached under
# recipes/results/suite/ (committed as they fill, so the hours they take are spent once), the adapters' beside them
# keyed by the adapters' weights. Kill it at any time and run it again. Logs: outputs/reproduce/logs/; time per step:
# outputs/reproduce/timings.tsv (killed attempts included).
# REPRODUCE_SMOKE=1 shrinks every step to seconds (for tests); SKIP_SHIP=1 stops before step 5.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=outputs/reproduce
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python; fi
mkdir -p "$OUT/logs"

val_args=() tok_args=() seq_args=() test_args=() held_out_args=() budget_args=()
if [ "${REPRODUCE_SMOKE:-0}" = 1 ]; then
  small=(--num_samples 2 --ks 1 2 --disable_tqdm true)
  val_args=("${small[@]}" --num_test_examples 2 --token_budgets 6 --cache_dir "$OUT/cache/validation")
  train=(--max_steps 1 --num_train_examples 8 --num_eval_examples 2 --max_completion_length 6 --eval_steps 1 --disable_tqdm true)
  tok_args=("${train[@]}" --token_budgets 4 6 --per_device_train_batch_size 2 --num_generations 2)
  seq_args=("${train[@]}" --parallel_budgets 1 2 --per_device_train_batch_size 2 --num_generations 2)
  test_args=("${small[@]}" --num_test_examples 2 --token_budgets 6 --cache_dir "$OUT/cache/test")
  held_out_args=("${small[@]}" --num_test_examples 2 --token_budgets 6 --cache_dir "$OUT/cache/held_out")
  budget_args=("${small[@]}" --num_test_examples 2 --token_budgets 8 --baselines_token_budget 6 --cache_dir "$OUT/cache/token_budgets")
fi

stage() {  # stage <name> <command...>: run unless already done, log it, time it
  local name=$1
  shift
  if [ -f "$OUT/.done-$name" ]; then
    echo "== $name: done before, skipped"
    return
  fi
  local log="$OUT/logs/$name.log" started="$OUT/.started-$name"
  if [ -f "$started" ] && [ -f "$log" ]; then  # an attempt was killed: count it until its log's last write
    printf '%s (interrupted)\t%d\n' "$name" $(($(stat -c %Y "$log") - $(cat "$started"))) >>"$OUT/timings.tsv"
  fi
  echo "== $name: $*"
  date +%s >"$started"
  local start=$SECONDS
  "$@" 2>&1 | tee -a "$log"
  printf '%s\t%d\n' "$name" $((SECONDS - start)) >>"$OUT/timings.tsv"
  touch "$OUT/.done-$name"
  rm -f "$started"
}

stage validation "$PY" recipes/evaluate.py --config recipes/configs/suite_validation.yaml \
  --output_dir "$OUT/validation" --write_baselines "$OUT/validation/baselines.json" "${val_args[@]}"
train() {  # train <run> <recipe> <args...>: skipped when the run's finished adapter is in its folder already
  local run=$1 recipe=$2 dir
  shift 2
  dir=$(sed -n 's/^output_dir: //p' "recipes/configs/reproduce/$run.yaml")
  if [ ! -f "$OUT/.done-train-$run" ] && [ -f "$dir/model.safetensors" ] && [ -f "$dir/README.md" ]; then
    echo "== train-$run: $dir holds its finished adapter (delete the folder to train it again), skipped"
    touch "$OUT/.done-train-$run"
    return
  fi
  stage "train-$run" "$PY" "$recipe" --config "recipes/configs/reproduce/$run.yaml" --resume_from_checkpoint auto "$@"
}
for run in token_budget token_no_budget token_entropy; do
  train "$run" recipes/train_tok.py "${tok_args[@]}"
done
for run in sequence_budget sequence_no_budget; do
  train "$run" recipes/train_seq.py "${seq_args[@]}"
done
stage test "$PY" recipes/evaluate.py --config recipes/configs/reproduce/test.yaml "${test_args[@]}"
stage held-out-families "$PY" recipes/evaluate.py --config recipes/configs/reproduce/held_out_families.yaml \
  "${held_out_args[@]}"
stage token-budgets "$PY" recipes/evaluate.py --config recipes/configs/reproduce/token_budgets.yaml "${budget_args[@]}"
if [ "${SKIP_SHIP:-0}" != 1 ]; then
  stage ship "$PY" recipes/ship_adapters.py --reproduction_dir "$OUT" --model_cards_dir model_cards
fi
echo "Reproduction complete: $OUT/test/results.md, $OUT/test/summary.json, $OUT/test/plots/, model_cards/"
cat "$OUT/timings.tsv"
