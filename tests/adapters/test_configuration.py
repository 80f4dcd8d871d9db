import json

import pytest

from hf_adaptive_decoding import ACTION_PRESETS, AdaptiveDecodingConfig, DecodingAction, candidate_pool


def test_presets_match_the_papers_tables():
    sizes = {"math-seq": 6, "code-seq": 6, "mixed-seq": 6, "math-token": 4, "candidate-pool": 180}
    for name, size in sizes.items():
        config = AdaptiveDecodingConfig.from_preset(name)
        assert config.num_actions == size, name
    assert set(ACTION_PRESETS) == set(sizes)
    token = AdaptiveDecodingConfig.from_preset("math-token")
    assert token.level == "token"
    assert token.action_names == ["greedy", "T=0.5", "T=1", "T=1.25"]
    math_seq = AdaptiveDecodingConfig.from_preset("math-seq")
    assert math_seq.level == "sequence"
    assert math_seq.actions[0] == DecodingAction(temperature=0.75, top_p=0.9, min_p=0.1)
    assert math_seq.actions[3] == DecodingAction(temperature=1.0, top_k=5, top_p=0.9)
    mixed = AdaptiveDecodingConfig.from_preset("mixed-seq")
    assert mixed.actions[5] == DecodingAction(do_sample=False)
    code = AdaptiveDecodingConfig.from_preset("code-seq")
    assert code.actions[5] == DecodingAction(temperature=0.75, top_k=5, min_p=0.1)


def test_candidate_pool_is_the_full_grid():
    pool = candidate_pool()
    assert len(pool) == len(set(pool)) == 180
    assert {a.temperature for a in pool} == {0.3, 0.5, 0.75, 1.0, 1.25}
    assert {a.top_k for a in pool} == {5, 10, 50, None}
    assert {a.top_p for a in pool} == {0.9, 0.95, None}
    assert {a.min_p for a in pool} == {0.1, 0.2, None}


def test_off_values_are_normalised():
    assert DecodingAction(top_k=0, top_p=1.0, min_p=0.0) == DecodingAction()
    assert DecodingAction(do_sample=False, temperature=0.7) == DecodingAction(do_sample=False)
    assert DecodingAction(temperature=0.75, top_k=10).name == "T=0.75 top_k=10"


@pytest.mark.parametrize(
    "kwargs, field, value",
    [
        ({"temperature": -0.5}, "temperature", "-0.5"),
        ({"temperature": 0.0}, "temperature", "0.0"),
        ({"temperature": float("nan")}, "temperature", "nan"),
        ({"top_p": 0.0}, "top_p", "0.0"),
        ({"top_p": 1.5}, "top_p", "1.5"),
        ({"min_p": 1.0}, "min_p", "1.0"),
        ({"min_p": -0.1}, "min_p", "-0.1"),
        ({"top_k": -1}, "top_k", "-1"),
        ({"top_k": 2.5}, "top_k", "2.5"),
        ({"do_sample": "yes"}, "do_sample", "yes"),
        ({"do_sample": False, "top_k": 5}, "top_k", "5"),
    ],
)
def test_invalid_action_names_field_and_value(kwargs, field, value):
    with pytest.raises(ValueError) as error:
        DecodingAction(**kwargs)
    assert field in str(error.value) and value in str(error.value)


@pytest.mark.parametrize(
    "kwargs, field, value",
    [
        ({"actions": []}, "actions", "empty"),
        ({"actions": [{"temperature": 0.5}, {"temperature": 0.5, "top_k": 0}]}, "duplicate", "T=0.5"),
        ({"level": "paragraph"}, "level", "paragraph"),
        ({"budget_feature": "sqrt"}, "budget_feature", "sqrt"),
        ({"budget_scale": 0}, "budget_scale", "0"),
        ({"prompt_pooling": "max"}, "prompt_pooling", "max"),
        ({"policy_temperature": 0}, "policy_temperature", "0"),
        ({"actions": [{"temprature": 0.5}]}, "temprature", "temperature"),
    ],
)
def test_invalid_config_names_field_and_value(kwargs, field, value):
    values = {"actions": [{"temperature": 1.0}], **kwargs}
    with pytest.raises(ValueError) as error:
        AdaptiveDecodingConfig(**values)
    assert field in str(error.value) and value in str(error.value)


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ValueError, match="math-token"):
        AdaptiveDecodingConfig.from_preset("math")


def test_round_trip_through_dict_and_json(tmp_path):
    config = AdaptiveDecodingConfig.from_preset("code-seq", budget_feature="linear", prompt_pooling="mean")
    assert AdaptiveDecodingConfig.from_dict(config.to_dict()) == config
    path = tmp_path / "actions.json"
    config.to_json_file(path)
    assert json.loads(path.read_text())["actions"][0]["top_p"] == 0.95
    assert AdaptiveDecodingConfig.coerce(str(path)) == config
    assert AdaptiveDecodingConfig.coerce("math-token") == AdaptiveDecodingConfig.from_preset("math-token")


def test_budget_scale_defaults_by_level():
    assert AdaptiveDecodingConfig.from_preset("math-token").budget_scale == 1024
    assert AdaptiveDecodingConfig.from_preset("math-seq").budget_scale == 16


def test_generation_kwargs_reproduce_the_action():
    action = DecodingAction(temperature=0.75, top_p=0.9, min_p=0.1)
    assert action.to_generation_kwargs() == {
        "do_sample": True,
        "temperature": 0.75,
        "top_k": 0,
        "top_p": 0.9,
        "min_p": 0.1,
    }
    assert DecodingAction(do_sample=False).to_generation_kwargs() == {"do_sample": False}


def test_action_names_round_trip_over_the_candidate_pool_and_greedy():
    actions = [DecodingAction(do_sample=False), *candidate_pool()]
    for action in actions:
        assert DecodingAction.from_name(action.name) == action, action.name
    assert DecodingAction.from_name("  greedy ") == DecodingAction(do_sample=False)
    assert DecodingAction.from_name("T=0.75 top_k=10 top_p=0.95 min_p=0.1") == DecodingAction(
        temperature=0.75, top_k=10, top_p=0.95, min_p=0.1
    )
    # Order of the parts does not matter; "off" values are normalised like in the constructor.
    assert DecodingAction.from_name("min_p=0.2 T=1.25") == DecodingAction(temperature=1.25, min_p=0.2)
    assert DecodingAction.from_name("T=1 top_k=0 top_p=1") == DecodingAction()


@pytest.mark.parametrize(
    ("name", "fragments"),
    [
        ("T=1 foo=2", ["'foo=2'", "'T=1 foo=2'"]),
        ("T=1 top_k", ["'top_k'"]),
        ("T=", ["'T='"]),
        ("T=abc", ["T in decoding action", "must be a number", "'abc'"]),
        ("T=1 top_k=2.5", ["top_k in decoding action", "must be an integer", "'2.5'"]),
        ("T=1 top_p=x", ["top_p", "'x'"]),
        ("top_k=5", ["names no temperature", "'top_k=5'"]),
        ("greedy T=1", ["'greedy'"]),
        ("temperature=1", ["'temperature=1'"]),
        ("T=0", ["temperature must be > 0", "do_sample=False"]),
        ("T=1 top_p=1.5", ["top_p", "1.5"]),
        ("", ["''"]),
        ("   ", ["'   '"]),
    ],
)
def test_bad_action_names_name_the_bad_part(name, fragments):
    with pytest.raises(ValueError) as error:
        DecodingAction.from_name(name)
    for fragment in fragments:
        assert fragment in str(error.value), (fragment, str(error.value))


def test_from_name_refuses_non_strings():
    with pytest.raises(ValueError, match="got None"):
        DecodingAction.from_name(None)


def test_context_features_default_and_entropy_at_token_level():
    assert AdaptiveDecodingConfig.from_preset("math-token").context_features == "hidden_state"
    config = AdaptiveDecodingConfig.from_preset("math-token", context_features="entropy")
    assert config.context_features == "entropy"
    assert config.to_dict()["context_features"] == "entropy"
    assert AdaptiveDecodingConfig.from_dict(config.to_dict()) == config


def test_entropy_features_are_refused_at_sequence_level():
    with pytest.raises(ValueError) as error:
        AdaptiveDecodingConfig.from_preset("math-seq", context_features="entropy")
    message = str(error.value)
    assert "context_features='entropy'" in message and "'sequence'" in message
    # Also when the level is overridden to sequence for a token preset.
    with pytest.raises(ValueError, match="token-level feature"):
        AdaptiveDecodingConfig.from_preset("math-token", level="sequence", context_features="entropy")
    with pytest.raises(ValueError, match=r"context_features='hidden_state\+stats' is a token-level feature"):
        AdaptiveDecodingConfig.from_preset("math-seq", context_features="hidden_state+stats")


@pytest.mark.parametrize("value", ["logits", "Entropy", None])
def test_unknown_context_features_are_refused(value):
    with pytest.raises(ValueError) as error:
        AdaptiveDecodingConfig(actions=[{"temperature": 1.0}], context_features=value)
    assert "context_features must be one of ('hidden_state', 'entropy', 'hidden_state+stats')" in str(error.value)
    assert repr(value) in str(error.value)
