"""Trainer validation measures the adapter and every static action through one decoding path, on one set of random
numbers: a policy that always picks an action scores exactly what that action scores alone."""

import pytest
import torch

from tests.training.test_trainer import ACTIONS, make_trainer


def _recording_trainer(tmp_path, level):
    seen: list[list[str]] = []

    def records(prompts, completions, **kwargs):
        seen.append([str(completion) for completion in completions])
        return [float(len(str(completion)) % 3 == 0) for completion in completions]

    trainer = make_trainer(tmp_path, level=level, reward_funcs=records, eval_num_examples=8, max_completion_length=12)
    return trainer, seen


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("action_index", range(len(ACTIONS)))
def test_an_adapter_pinned_to_an_action_validates_as_that_static_action(tmp_path, level, action_index):
    trainer, seen = _recording_trainer(tmp_path, level)
    with torch.no_grad():
        trainer.unwrapped_adapter.output_layer.bias[action_index] = 100.0
    adapter_result = trainer.evaluate()
    adapter_completions = list(seen)
    seen.clear()
    static = trainer.evaluate_static_actions()
    per_action = len(seen) // len(ACTIONS)
    static_completions = seen[action_index * per_action : (action_index + 1) * per_action]
    assert adapter_completions == static_completions
    assert adapter_result["eval_reward"] == static[ACTIONS[action_index].name]
    assert adapter_result[f"eval_action_share/{ACTIONS[action_index].name}"] == 1.0


def test_validation_samples_do_not_depend_on_the_batch_size(tmp_path):
    trainer, seen = _recording_trainer(tmp_path, "token")
    sampled = ACTIONS.index(next(action for action in ACTIONS if action.do_sample))
    with torch.no_grad():
        trainer.unwrapped_adapter.output_layer.bias[sampled] = 100.0
    trainer.evaluate()
    by_four = [c for chunk in seen for c in chunk]
    seen.clear()
    trainer.args.per_device_eval_batch_size = 3
    trainer.evaluate()
    assert [c for chunk in seen for c in chunk] == by_four
