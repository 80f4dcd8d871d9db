import pytest
import torch

from hf_adaptive_decoding import (
    DRAFT_FEATURES,
    AutoDecodingAdapter,
    DraftAdapterConfig,
    DraftAdapterModel,
    IncompatibleBaseModelError,
)
from tests.conftest import make_tiny_model


def _inputs(adapter: DraftAdapterModel, rows: int = 5, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    features = torch.rand(rows, len(DRAFT_FEATURES), generator=generator)
    hidden = torch.randn(rows, adapter.config.base_model_hidden_size, generator=generator) * 3
    return features, hidden


def test_a_fresh_adapter_stops_with_the_initial_probability_whatever_it_sees(llama):
    adapter = DraftAdapterModel.for_model(llama, initial_stop_probability=0.2)
    features, hidden = _inputs(adapter)
    probs = torch.sigmoid(adapter(features, hidden).stop_logits)
    assert probs.shape == (5,)
    assert torch.allclose(probs, torch.full((5,), 0.2), atol=1e-6)
    assert adapter.config.base_model_hidden_size == llama.config.hidden_size
    assert adapter.config.base_model_vocab_size == llama.config.vocab_size


def test_decide_stop_samples_or_thresholds(llama):
    adapter = DraftAdapterModel.for_model(llama, initial_stop_probability=0.3)
    features, hidden = _inputs(adapter, rows=4000)
    torch.manual_seed(0)
    stop, probs = adapter.decide_stop(features, hidden)
    assert stop.dtype == torch.bool and 0.27 < stop.float().mean() < 0.33
    assert not adapter.decide_stop(features, hidden, deterministic=True)[0].any()  # 0.3 < 0.5
    likely = DraftAdapterModel.for_model(llama, initial_stop_probability=0.7)
    assert likely.decide_stop(features, hidden, deterministic=True)[0].all()


def test_save_and_load_through_the_auto_class(llama, tmp_path):
    adapter = DraftAdapterModel.for_model(llama, max_draft_tokens=6)
    with torch.no_grad():
        for parameter in adapter.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    adapter.save_pretrained(tmp_path)
    loaded = AutoDecodingAdapter.from_pretrained(tmp_path)
    assert isinstance(loaded, DraftAdapterModel) and loaded.max_draft_tokens == 6
    assert loaded.config.feature_names == list(DRAFT_FEATURES)
    features, hidden = _inputs(adapter)
    assert torch.allclose(adapter(features, hidden).stop_logits, loaded(features, hidden).stop_logits, atol=1e-6)


def test_without_the_hidden_state_the_policy_reads_only_the_features(llama):
    adapter = DraftAdapterModel.for_model(llama, use_hidden_state=False)
    features, _ = _inputs(adapter)
    assert adapter(features).stop_logits.shape == (5,)
    assert not any("hidden_state_projection" in name for name, _ in adapter.named_parameters())


def test_gradients_reach_every_parameter(llama):
    adapter = DraftAdapterModel.for_model(llama).train()
    features, hidden = _inputs(adapter)
    adapter(features, hidden).stop_logits.sum().backward()
    # The output layer starts at zero, so only it gets a gradient at first; after one step every layer would.
    assert adapter.output_layer.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in adapter.parameters())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_draft_tokens": 0}, r"max_draft_tokens must be an int in \[1, 128\], got 0"),
        ({"initial_stop_probability": 1.0}, r"initial_stop_probability must be in \(0, 1\), got 1.0"),
        ({"adapter_hidden_size": 0}, "adapter_hidden_size must be >= 1, got 0"),
        ({"hidden_act": "nope"}, "hidden_act 'nope' is not one of"),
        ({"feature_names": ["draft_prob"]}, "saved by another version"),
        ({"candidate_source": "beam"}, "candidate_source must be one of .* or None, got 'beam'"),
    ],
)
def test_invalid_configs_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DraftAdapterConfig(**kwargs)


def test_wrong_input_shapes_are_refused(llama):
    adapter = DraftAdapterModel.for_model(llama)
    features, hidden = _inputs(adapter)
    with pytest.raises(ValueError, match=r"features must have shape \(batch, 10\)"):
        adapter(features[:, :3], hidden)
    with pytest.raises(ValueError, match=r"hidden_states must have shape \(5, 32\).*got None"):
        adapter(features)
    with pytest.raises(ValueError, match=r"hidden_states must have shape \(5, 32\).*got \(5, 8\)"):
        adapter(features, hidden[:, :8])


def test_an_adapter_for_another_model_is_refused(llama):
    adapter = DraftAdapterModel.for_model(make_tiny_model("qwen2"))
    with pytest.raises(IncompatibleBaseModelError, match="This draft adapter was built for .*hidden size 32 != 48"):
        adapter.check_compatible(llama)
