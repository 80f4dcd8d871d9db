import json
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoConfig, AutoModel

from hf_adaptive_decoding import (
    AdaptiveDecodingConfig,
    AutoDecodingAdapter,
    DecodingAdapterConfig,
    DecodingAdapterModel,
    IncompatibleBaseModelError,
)
from tests.conftest import make_tiny_model


def test_for_model_sizes_the_adapter_and_starts_uniform(llama):
    adapter = AutoDecodingAdapter.for_model(llama, "math-seq", adapter_hidden_size=16)
    assert isinstance(adapter, DecodingAdapterModel)
    assert adapter.config.base_model_hidden_size == 32 and adapter.config.base_model_vocab_size == 128
    linears = [m for m in adapter.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 3 + 2  # the 3-layer policy MLP and the 2-layer budget encoder
    probs = adapter.eval()(torch.randn(5, 32), budget=torch.tensor(4)).logits.softmax(-1)
    torch.testing.assert_close(probs, torch.full((5, 6), 1 / 6))


def test_budget_agnostic_adapter_has_no_budget_encoder(llama):
    config = AdaptiveDecodingConfig.from_preset("math-token", budget_feature=None)
    adapter = AutoDecodingAdapter.for_model(llama, config)
    assert not hasattr(adapter, "budget_encoder")
    assert adapter(torch.randn(2, 32)).logits.shape == (2, 4)


def test_budget_is_required_when_configured(llama):
    adapter = AutoDecodingAdapter.for_model(llama, "math-token")
    with pytest.raises(ValueError, match="budget"):
        adapter(torch.randn(2, 32))


def test_save_and_load_round_trip_is_safetensors_only(llama, tmp_path):
    adapter = AutoDecodingAdapter.for_model(llama, "code-seq", base_model_revision="abc123")
    torch.nn.init.normal_(adapter.output_layer.weight)
    adapter.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "decoding_adapter"
    assert saved["base_model_revision"] == "abc123"
    assert (saved["base_model_hidden_size"], saved["base_model_vocab_size"]) == (32, 128)
    assert saved["decoding"]["level"] == "sequence" and len(saved["decoding"]["actions"]) == 6
    for loader in (AutoDecodingAdapter.from_pretrained, AutoModel.from_pretrained):
        loaded = loader(tmp_path)
        assert isinstance(loaded, DecodingAdapterModel)
        for (name, a), b in zip(adapter.state_dict().items(), loaded.state_dict().values(), strict=True):
            assert torch.equal(a, b), name
    assert isinstance(AutoConfig.from_pretrained(tmp_path), DecodingAdapterConfig)


def test_pickled_weights_are_refused(llama, tmp_path):
    adapter = AutoDecodingAdapter.for_model(llama)
    adapter.config.save_pretrained(tmp_path)
    torch.save(adapter.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(OSError, match="safetensors"):
        AutoDecodingAdapter.from_pretrained(tmp_path)


def test_missing_folder_and_foreign_configs_are_clear_errors(llama, tmp_path):
    with pytest.raises(FileNotFoundError, match="No adapter folder"):
        AutoDecodingAdapter.from_pretrained(str(tmp_path / "nope"))
    llama.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not a decoding adapter"):
        AutoDecodingAdapter.from_pretrained(tmp_path)


def test_push_to_hub_commits_the_safetensors_folder(llama, monkeypatch):
    """The real transformers/huggingface_hub upload path, with only the two network calls replaced."""
    import huggingface_hub

    commits = []
    monkeypatch.setattr(
        huggingface_hub.HfApi, "create_repo", lambda self, repo_id, **kw: SimpleNamespace(repo_id=repo_id)
    )
    monkeypatch.setattr(
        huggingface_hub.HfApi,
        "create_commit",
        lambda self, repo_id, operations, **kw: commits.append(
            (repo_id, sorted(op.path_in_repo for op in operations))
        ),
    )
    AutoDecodingAdapter.for_model(llama).push_to_hub("user/tiny-adapter")
    assert commits == [("user/tiny-adapter", ["README.md", "config.json", "model.safetensors"])]


@pytest.mark.parametrize("other_arch", ["qwen2", "gpt2"])
def test_wrong_base_model_names_both_models(llama, other_arch):
    llama.name_or_path = "org/tiny-llama"
    adapter = AutoDecodingAdapter.for_model(llama)
    other = make_tiny_model(other_arch)
    other.name_or_path = f"org/tiny-{other_arch}"
    with pytest.raises(IncompatibleBaseModelError) as error:
        adapter.check_compatible(other)
    message = str(error.value)
    assert "org/tiny-llama" in message and f"org/tiny-{other_arch}" in message and "hidden size" in message


def test_same_shapes_but_different_model_id_is_refused(llama):
    llama.name_or_path = "org/model-a"
    adapter = AutoDecodingAdapter.for_model(llama)
    twin = make_tiny_model("llama", seed=1)
    twin.name_or_path = "org/model-b"
    with pytest.raises(IncompatibleBaseModelError, match="different base model id"):
        adapter.check_compatible(twin)
    twin.name_or_path = "org/model-a"
    adapter.check_compatible(twin)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"adapter_hidden_size": 0}, "adapter_hidden_size"),
        ({"dropout": 1.5}, "dropout"),
        ({"hidden_act": "swish2"}, "swish2"),
        ({"decoding": {"actions": [], "level": "token"}}, "empty"),
    ],
)
def test_invalid_adapter_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DecodingAdapterConfig(**kwargs)


def test_policy_temperature_sharpens(llama):
    config = AdaptiveDecodingConfig.from_preset("math-token", policy_temperature=0.1)
    adapter = AutoDecodingAdapter.for_model(llama, config).eval()
    torch.nn.init.normal_(adapter.output_layer.weight)
    hidden, budget = torch.randn(3, 32), torch.tensor(10)
    cold = adapter(hidden, budget).logits
    adapter.policy_temperature = 1.0
    torch.testing.assert_close(cold * 0.1, adapter(hidden, budget).logits)


def test_features_of_the_wrong_width_are_refused(llama):
    adapter = AutoDecodingAdapter.for_model(llama, "math-token")
    with pytest.raises(ValueError, match=r"\(batch, 32\).*\(2, 48\)"):
        adapter(torch.randn(2, 48), budget=torch.tensor(3))


def _entropy_adapter(model, **kwargs):
    config = AdaptiveDecodingConfig.from_preset("math-token", context_features="entropy")
    return AutoDecodingAdapter.for_model(model, config, **kwargs)


def test_entropy_adapter_takes_one_feature_and_has_no_layer_norm(llama):
    adapter = _entropy_adapter(llama, budget_hidden_size=8).eval()
    assert adapter.context_features == "entropy" and adapter.context_size == 1
    assert isinstance(adapter.feature_norm, torch.nn.Identity)
    assert not any(isinstance(module, torch.nn.LayerNorm) for module in adapter.modules())
    assert adapter.mlp[0].in_features == 1 + 8  # the entropy and the encoded budget
    torch.nn.init.normal_(adapter.output_layer.weight)
    entropy = torch.tensor([[0.0], [0.5], [3.0]])
    logits = adapter(entropy, budget=torch.tensor(7)).logits
    assert logits.shape == (3, 4)
    # A LayerNorm over one feature would map every entropy to the same value; here different entropies matter.
    assert not torch.allclose(logits[0], logits[2])
    # The hidden-state adapter of the same model does normalise its features.
    assert isinstance(AutoDecodingAdapter.for_model(llama, "math-token").feature_norm, torch.nn.LayerNorm)


def test_entropy_adapter_refuses_hidden_states(llama):
    adapter = _entropy_adapter(llama)
    with pytest.raises(ValueError, match=r"\(batch, 1\), the next-token entropy; got \(2, 32\)"):
        adapter(torch.randn(2, 32), budget=torch.tensor(3))
    with pytest.raises(ValueError, match=r"\(batch, 1\).*got \(3,\)"):
        adapter(torch.randn(3), budget=torch.tensor(3))


def test_stats_adapter_normalises_the_hidden_state_but_not_the_statistics(llama):
    config = AdaptiveDecodingConfig.from_preset("math-token", context_features="hidden_state+stats")
    adapter = AutoDecodingAdapter.for_model(llama, config, budget_hidden_size=8).eval()
    assert adapter.context_size == 32 + 2 and adapter.mlp[0].in_features == 34 + 8
    assert adapter.feature_norm.normalized_shape == (32,)
    torch.nn.init.normal_(adapter.output_layer.weight)
    hidden = torch.randn(1, 32).expand(2, 32)
    statistics = torch.tensor([[0.1, 0.9], [3.0, 0.1]])  # the same hidden state, another next-token distribution
    logits = adapter(torch.cat([hidden, statistics], dim=-1), budget=torch.tensor(7)).logits
    assert not torch.allclose(logits[0], logits[1])
    with pytest.raises(ValueError, match=r"\(batch, 34\), the base model's hidden size, then the next-token entropy"):
        adapter(torch.randn(2, 32), budget=torch.tensor(3))


def test_entropy_adapter_save_and_load_keeps_context_features(llama, tmp_path):
    adapter = _entropy_adapter(llama).eval()
    torch.nn.init.normal_(adapter.output_layer.weight)
    adapter.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["decoding"]["context_features"] == "entropy"
    loaded = AutoDecodingAdapter.from_pretrained(tmp_path).eval()
    assert loaded.context_features == "entropy" and loaded.context_size == 1
    assert loaded.decoding_config.context_features == "entropy"
    assert loaded.state_dict().keys() == adapter.state_dict().keys()
    entropy, budget = torch.tensor([[0.1], [2.0]]), torch.tensor([5, 50])
    torch.testing.assert_close(loaded(entropy, budget).logits, adapter(entropy, budget).logits)


def test_budget_logits_start_uniform_round_trip_and_need_a_budget(llama, tmp_path):
    adapter = AutoDecodingAdapter.for_model(llama, "mixed-seq", adapter_hidden_size=16, budget_logits=True).eval()
    features = torch.randn(3, 32)
    for budget in (1, 8):  # a fresh adapter is uniform at every budget
        probs = adapter(features, budget=torch.tensor(budget)).logits.softmax(-1)
        torch.testing.assert_close(probs, torch.full((3, 6), 1 / 6))
    first_layer = adapter.budget_logits[0]
    assert first_layer.weight.std() > 0.5  # unit-scale random features of the budget, not the MLP's 0.02
    torch.nn.init.normal_(adapter.budget_logits[-1].weight)
    one, eight = (adapter(features, budget=torch.tensor(b)).logits for b in (1, 8))
    assert not torch.allclose(one, eight)
    torch.testing.assert_close(one - one[0], eight - eight[0])  # the path sees the budget alone, not the context
    adapter.save_pretrained(tmp_path)
    loaded = AutoDecodingAdapter.from_pretrained(tmp_path).eval()
    assert loaded.config.budget_logits
    torch.testing.assert_close(loaded(features, budget=torch.tensor(8)).logits, eight)
    without = AutoDecodingAdapter.for_model(llama, "mixed-seq", adapter_hidden_size=16)
    assert without.budget_logits is None and not without.config.budget_logits
    no_budget = AdaptiveDecodingConfig.from_preset("mixed-seq", budget_feature=None).to_dict()
    with pytest.raises(ValueError, match="budget_logits=True.*budget_feature=None"):
        DecodingAdapterConfig(decoding=no_budget, budget_logits=True)
