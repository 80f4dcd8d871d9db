"""Each private transformers API that generation touches (hf_adaptive_decoding/compat.py, generation section) still
exists and behaves as we use it. A failure here names the API that a transformers release changed."""

import inspect

import pytest
import torch
from transformers import GenerationConfig
from transformers.generation import GenerationMixin

from hf_adaptive_decoding import compat
from hf_adaptive_decoding.generation.generate import BUILTIN_WARPERS


def test_prepare_generation_config_resolves_model_defaults_and_kwargs(llama):
    assert hasattr(GenerationMixin, "_prepare_generation_config"), "GenerationMixin._prepare_generation_config is gone"
    llama.generation_config.top_k = 7
    resolved = compat.prepare_generation_config(llama, None, max_new_tokens=5, temperature=0.3)
    assert isinstance(resolved, GenerationConfig)
    assert (resolved.max_new_tokens, resolved.temperature, resolved.top_k) == (5, 0.3, 7)


def test_default_generation_params_still_hold_the_library_defaults():
    assert hasattr(GenerationConfig, "_get_default_generation_params"), (
        "GenerationConfig._get_default_generation_params"
    )
    defaults = compat.default_generation_params()
    assert defaults.get("top_k") == 50 and defaults.get("temperature") == 1.0


def test_sample_takes_what_we_pass():
    assert compat.sample_signature_has(
        "input_ids", "logits_processor", "stopping_criteria", "generation_config", "synced_gpus", "streamer"
    ), f"GenerationMixin._sample's signature changed: {inspect.signature(GenerationMixin._sample)}"


def test_custom_generate_still_drops_the_streamer_so_we_read_it_from_generate(llama):
    """If transformers starts passing `streamer` to custom_generate callables, the frame read can go."""
    seen = {}

    def custom(model, input_ids, logits_processor, stopping_criteria, generation_config, streamer=None, **kwargs):
        seen["streamer"] = streamer
        seen["from_frame"] = compat.streamer_of_calling_generate(inspect.currentframe().f_back)[0]
        return input_ids

    class Streamer:
        def put(self, value): ...

        def end(self): ...

    streamer = Streamer()
    llama.generate(torch.tensor([[3, 4, 5]]), custom_generate=custom, streamer=streamer, max_new_tokens=2)
    assert seen["streamer"] is None and seen["from_frame"] is streamer


@pytest.mark.parametrize(
    "settings",
    [
        {"do_sample": False},
        {"do_sample": True, "temperature": 0.7, "top_k": 0},
        {"do_sample": True, "temperature": 1.0, "top_k": 20, "top_p": 0.9},
        {"do_sample": True, "top_k": 0, "min_p": 0.1, "typical_p": 0.5},
        {"do_sample": True, "top_k": 0, "epsilon_cutoff": 0.1, "eta_cutoff": 0.1, "top_h": 0.5},
    ],
)
def test_generate_warper_count_mirrors_get_logits_processor(llama, settings):
    assert hasattr(GenerationMixin, "_get_logits_processor"), "GenerationMixin._get_logits_processor is gone"
    config = GenerationConfig(**settings)
    built = compat.logits_processors_of_generate(llama, config, input_length=3)
    warpers = [processor for processor in built if isinstance(processor, BUILTIN_WARPERS)]
    assert compat.generate_warper_count(config) == len(warpers)
