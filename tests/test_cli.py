import re

import pytest

from hf_adaptive_decoding.cli import main


@pytest.mark.slow
def test_generate_shows_the_action_of_each_token(default_model, capsys):
    assert main(["generate", "--prompt", "What is 7 * 8?", "--max-new-tokens", "16", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert "untrained 'math-token' adapter" in out
    assert "[0] greedy" in out and "[3] T=1.25" in out
    assert "actions used:" in out


@pytest.mark.slow
def test_generate_sequence_level_batch_and_plain_streaming(default_model, tmp_path, capsys):
    from hf_adaptive_decoding import AutoDecodingAdapter

    model, _ = default_model
    AutoDecodingAdapter.for_model(model, "mixed-seq").save_pretrained(tmp_path)
    argv = ["generate", "--adapter", str(tmp_path), "--prompt", "Hi", "--prompt", "2+2?", "--max-new-tokens", "8"]
    assert main(argv + ["--num-return-sequences", "2"]) == 0
    assert capsys.readouterr().out.count("prompt 1:") == 2
    assert main(argv[:5] + ["--max-new-tokens", "8", "--no-actions"]) == 0
    assert capsys.readouterr().out.strip()


def test_bad_adapter_path_is_a_clean_error(capsys):
    assert main(["generate", "--adapter", "/no/such/adapter", "--prompt", "hi", "--model", "/no/such/model"]) == 2
    assert "error:" in capsys.readouterr().out


@pytest.mark.slow
def test_shipped_adapters_are_listed_and_loaded_by_short_name(default_model, tmp_path, monkeypatch, capsys):
    from hf_adaptive_decoding import AdaptiveDecodingConfig, AutoDecodingAdapter
    from hf_adaptive_decoding.adapters import shipped

    model, _ = default_model
    config = AdaptiveDecodingConfig.from_preset("math-token", context_features="entropy")
    AutoDecodingAdapter.for_model(model, config).save_pretrained(tmp_path / "my-entropy-adapter")
    monkeypatch.setattr(shipped, "SHIPPED_ADAPTERS_DIR", tmp_path)
    assert main(["adapters"]) == 0
    listing = capsys.readouterr().out
    assert "my-entropy-adapter" in listing and "token level" in listing and "'T=1.25'" in listing
    argv = ["generate", "--adapter", "my-entropy-adapter", "--prompt", "2+2?", "--max-new-tokens", "6"]
    assert main(argv) == 0
    assert "actions used:" in capsys.readouterr().out


def test_draft_adapters_are_listed_with_their_source(llama, tmp_path, monkeypatch, capsys):
    from hf_adaptive_decoding import DraftAdapterModel
    from hf_adaptive_decoding.adapters import shipped

    DraftAdapterModel.for_model(llama, candidate_source="prompt_lookup").save_pretrained(tmp_path / "my-draft")
    monkeypatch.setattr(shipped, "SHIPPED_ADAPTERS_DIR", tmp_path)
    assert main(["adapters"]) == 0
    assert "my-draft  draft adapter for prompt_lookup, up to 8 tokens" in capsys.readouterr().out


def test_adapters_command_without_shipped_adapters(tmp_path, monkeypatch, capsys):
    from hf_adaptive_decoding.adapters import shipped

    monkeypatch.setattr(shipped, "SHIPPED_ADAPTERS_DIR", tmp_path / "none")
    assert main(["adapters"]) == 0
    assert "No shipped adapters" in capsys.readouterr().out


@pytest.mark.slow
def test_generate_with_a_draft_adapter_shows_accepted_drafts(default_model, tmp_path, capsys):
    from hf_adaptive_decoding import DraftAdapterModel

    model, _ = default_model
    DraftAdapterModel.for_model(model, candidate_source="prompt_lookup").save_pretrained(tmp_path / "draft")
    prompt = "Repeat exactly: the cat sat on the mat, the cat sat on the mat, the cat sat on the mat."
    argv = ["generate", "--adapter", str(tmp_path / "draft"), "--prompt", prompt, "--max-new-tokens", "24"]
    assert main(argv + ["--deterministic"]) == 0
    out = capsys.readouterr().out
    assert "prompt_lookup, up to 8 drafted tokens per cycle" in out
    assert re.search(r"\d+ tokens in \d+ cycles, .* tok/s\); drafted \d+, accepted \d+ \(\d+%\)", out)
    assert main(argv + ["--source", "early_exit"]) == 2
    assert "source='early_exit' needs early_exit_layer" in capsys.readouterr().out
    assert main(argv + ["--source", "assistant_model"]) == 2
    assert "needs --draft-model or --draft-layers" in capsys.readouterr().out
    assert main(argv + ["--source", "early_exit", "--early-exit-layer", "8", "--max-new-tokens", "8"]) == 0
    assert "early_exit, up to 8" in capsys.readouterr().out


def test_only_serve_passes_unknown_options_on(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["adapters", "--max-model-len", "512"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --max-model-len 512" in capsys.readouterr().err


def test_serve_without_vllm_says_how_to_install_it(capsys):
    try:
        import vllm  # noqa: F401
    except ImportError:
        assert main(["serve", "--adapter", "smollm2-135m-arithmetic-token-budget"]) == 2
        assert "hf-adaptive-decoding serve needs vLLM" in capsys.readouterr().out
    else:
        pytest.skip("vLLM is installed here: tests/vllm/test_serve.py runs the server")
