"""The trainer configurations: TRL's names, renamed fields refused by their new names, the settings a run records."""

import json
import logging

import pytest
import torch
from trl import TrlParser

from hf_adaptive_decoding import AdapterTrainerConfig
from hf_adaptive_decoding.speculative.trainer import DraftTrainerConfig
from hf_adaptive_decoding.training import checkpointing
from tests.training.test_trainer import make_trainer

RENAMED = [
    (AdapterTrainerConfig, "beta", 0.05, "entropy_coef"),
    (AdapterTrainerConfig, "max_new_tokens", 32, "max_completion_length"),
    (AdapterTrainerConfig, "scale_advantages", True, "scale_rewards"),
    (DraftTrainerConfig, "max_new_tokens", 32, "max_completion_length"),
    (DraftTrainerConfig, "traces_per_step", 4, "per_device_train_batch_size"),
    (DraftTrainerConfig, "rollouts", 4, "num_generations"),
]
DRAFT = {"source": "prompt_lookup"}


@pytest.mark.parametrize(("config", "old", "value", "new"), RENAMED)
def test_a_renamed_field_from_an_old_json_config_is_refused_with_its_new_name(config, old, value, new):
    settings = json.loads(json.dumps({**(DRAFT if config is DraftTrainerConfig else {}), old: value}))
    with pytest.raises(ValueError, match=rf"{config.__name__}\.{old} is now `{new}` .*set `{new}` instead"):
        config(**settings)


def test_a_renamed_field_from_an_old_yaml_config_or_command_line_is_refused(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("output_dir: somewhere\nbeta: 0.05\n")
    with pytest.raises(ValueError, match=r"\.beta is now `entropy_coef`"):
        TrlParser((AdapterTrainerConfig,)).parse_args_and_config(["--config", str(old)])
    with pytest.raises(ValueError, match=r"\.rollouts is now `num_generations`"):
        TrlParser((DraftTrainerConfig,)).parse_args_and_config(["--source", "prompt_lookup", "--rollouts", "4"])


def test_renamed_fields_are_not_settings_and_old_records_read_under_the_new_names():
    settings = AdapterTrainerConfig().to_dict()
    assert not {"beta", "max_new_tokens", "scale_advantages"} & set(settings)
    assert {"entropy_coef", "max_completion_length", "scale_rewards"} <= set(settings)
    assert set(DraftTrainerConfig(**DRAFT).to_dict()) >= {"num_generations", "per_device_train_batch_size"}
    recorded = {"beta": 0.05, "rollouts": 8, "max_steps": 3}
    assert AdapterTrainerConfig.with_current_names(recorded) == {"entropy_coef": 0.05, "rollouts": 8, "max_steps": 3}
    assert DraftTrainerConfig.with_current_names(recorded) == {"beta": 0.05, "num_generations": 8, "max_steps": 3}


@pytest.mark.parametrize(("value", "expected"), [(True, "group"), ("false", "none"), ("batch", "batch")])
def test_scale_rewards_takes_trl_values(value, expected):
    assert AdapterTrainerConfig(scale_rewards=value).scale_rewards == expected


def test_scale_rewards_refuses_unknown_values_and_a_group_of_one():
    with pytest.raises(ValueError, match="scale_rewards must be one of"):
        AdapterTrainerConfig(scale_rewards="prompt")
    with pytest.raises(ValueError, match=r"'none' or 'batch' with num_generations=1 \(a group of one\), got 'group'"):
        AdapterTrainerConfig(scale_rewards="group", num_generations=1, filter_prompts=False)


@pytest.mark.parametrize("scale", ["none", "batch", "group"])
def test_advantages_are_scaled_by_the_step_or_by_each_prompt(tmp_path, scale):
    trainer = make_trainer(tmp_path, scale_rewards=scale, baseline="batch_mean", filter_prompts=False)
    rewards = torch.tensor([0.0, 1.0, 2.0, 2.0, 5.0, 9.0, 1.0, 3.0])  # 4 prompts x 2 generations
    unit_prompt = torch.arange(4).repeat_interleave(2)
    scaled, keep, _, _ = trainer._advantages(rewards, unit_prompt)
    centred = rewards - rewards.mean()
    if scale == "none":
        expected = centred
    elif scale == "batch":
        expected = centred / (rewards.std(unbiased=False) + 1e-4)
    else:
        expected = centred / (torch.tensor([0.5, 0.5, 0.0, 0.0, 2.0, 2.0, 1.0, 1.0]) + 1e-4)
    torch.testing.assert_close(scaled, expected)
    assert bool(keep.all())


def test_resuming_a_run_recorded_under_old_names_compares_them_under_the_new_ones(tmp_path, caplog):
    trainer = make_trainer(tmp_path, max_steps=1, eval_steps=None, plot=False)
    trainer.train()
    checkpoint = checkpointing.complete_checkpoints(tmp_path / "run")[-1]
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    config = state["config"]
    config["beta"], config["max_new_tokens"] = config.pop("entropy_coef"), config.pop("max_completion_length")
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    with caplog.at_level(logging.WARNING):
        make_trainer(tmp_path, max_steps=2, eval_steps=None, plot=False).train(resume_from_checkpoint=True)
    assert "other settings" not in caplog.text
    config["beta"] = 0.5
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    with caplog.at_level(logging.WARNING):
        make_trainer(tmp_path, max_steps=2, eval_steps=None, plot=False).train(resume_from_checkpoint=checkpoint)
    assert "other settings than it was saved with (entropy_coef;" in caplog.text
