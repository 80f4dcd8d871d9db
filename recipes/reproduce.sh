#!/usr/bin/env bash
# Reproduce the paper's comparison on the embedded default model (SmolLM2-135M-Instruct) and the built-in arithmetic
# tasks, on CPU:
#
#   bash .ci/install && bash recipes/reproduce.sh
#
#   1. select the action spaces from the 181 candidates on validation (Appendix C, Figure 6);
#   2. train five adapters: token level with and without the token budget, the entropy-only token ablation, and
#      sequence level with and without the parallel budget;
#   3. evaluate them against BEST, MIXED, greedy, min-p and EDT on the held-out test split (Tables 1 and 5, plots);
#   4. copy the adapters into model_cards/<name>/ with their model cards and the results.
#
# Resumable: every step that finished is skipped (a marker in outputs/reproduce/), a training step continues from
# its newest checkpoint, selection and evaluation reuse what they cached. Kill it at any time and run it again.
# Logs: outputs/reproduce/logs/; time per step: outputs/reproduce/timings.tsv (killed attempts included).
# REPRODUCE_SMOKE=1 shrinks every step to seconds (for tests); SKIP_SHIP=1 stops before step 4.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=outputs/reproduce
if [ -n "${PYTHON:-}" ]; then PY="$PYTHON"; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python; fi
mkdir -p "$OUT/logs"

select_args=() tok_args=() seq_args=() eval_args=() sweep_args=()
if [ "${REPRODUCE_SMOKE:-0}" = 1 ]; then
  select_args=(--num_eval_examples 1 --max_new_tokens 6 --disable_tqdm true)
  train=(--max_steps 1 --num_train_examples 8 --num_eval_examples 2 --max_completion_length 6 --eval_steps 1 --disable_tqdm true)
  tok_args=("${train[@]}" --token_budgets 4 6 --per_device_train_batch_size 2)
  seq_args=("${train[@]}" --parallel_budgets 1 2 --per_device_train_batch_size 2 --num_generations 2)
  small=(--num_test_examples 2 --num_samples 2 --ks 1 2 --seeds 0 --disable_tqdm true)
  eval_args=("${small[@]}" --token_budgets 6)
  sweep_args=("${small[@]}" --token_budgets 4 6)
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

stage select-actions "$PY" recipes/select_actions.py --output_dir "$OUT/action_selection" "${select_args[@]}"
for run in token_budget token_no_budget token_entropy; do
  stage "train-$run" "$PY" recipes/train_tok.py --config "recipes/configs/reproduce/$run.yaml" \
    --resume_from_checkpoint auto "${tok_args[@]}"
done
for run in sequence_budget sequence_no_budget; do
  stage "train-$run" "$PY" recipes/train_seq.py --config "recipes/configs/reproduce/$run.yaml" \
    --resume_from_checkpoint auto "${seq_args[@]}"
done
stage evaluate "$PY" recipes/evaluate.py --config recipes/configs/reproduce/evaluate.yaml "${eval_args[@]}"
stage evaluate-token-budgets "$PY" recipes/evaluate.py --config recipes/configs/reproduce/evaluate_token_budgets.yaml \
  "${sweep_args[@]}"
if [ "${SKIP_SHIP:-0}" != 1 ]; then
  stage ship "$PY" recipes/ship_adapters.py --reproduction_dir "$OUT" --model_cards_dir model_cards
fi
echo "Reproduction complete: $OUT/evaluation/results.md, $OUT/evaluation/plots/, model_cards/"
cat "$OUT/timings.tsv"
