"""The decoding adapters this project ships, by short name: folders under `model_cards/` laid out as Hub repos."""

from __future__ import annotations

import os
from pathlib import Path

# In a checkout (or an editable install) the shipped adapters sit next to the package.
SHIPPED_ADAPTERS_DIR = Path(__file__).resolve().parents[2] / "model_cards"


def shipped_adapters(folder: str | os.PathLike | None = None) -> dict[str, Path]:
    """Short name -> folder of every shipped adapter (a folder of `model_cards/` holding a `config.json`)."""
    root = Path(folder) if folder is not None else SHIPPED_ADAPTERS_DIR
    if not root.is_dir():
        return {}
    return {path.name: path for path in sorted(root.iterdir()) if (path / "config.json").is_file()}


def resolve_adapter(name_or_path: str | os.PathLike) -> str:
    """
    A folder stays a folder; the short name of a shipped adapter (e.g. `"smollm2-135m-arithmetic-token-budget"`)
    becomes its folder; anything else is taken as a Hub repo id.
    """
    name = str(name_or_path)
    if os.path.isdir(name):
        return name
    shipped = shipped_adapters()
    if name in shipped:
        return str(shipped[name])
    return name
