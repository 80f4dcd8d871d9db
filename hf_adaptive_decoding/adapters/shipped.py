"""
The decoding adapters this project ships, by short name: folders laid out as Hub repos, one per adapter.

They live in the repository's top-level `model_cards/` folder. A wheel (`pip install .`, or one built with `pip wheel
.`) installs their loadable files inside the package, as `hf_adaptive_decoding/model_cards/` (see `pyproject.toml`).
Short names are looked up in [`SHIPPED_ADAPTERS_DIR`]: the installed folder when there is one, else the checkout's
(a clone or an editable install).
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
INSTALLED_ADAPTERS_DIR = PACKAGE_DIR / "model_cards"  # a wheel install
CHECKOUT_ADAPTERS_DIR = PACKAGE_DIR.parent / "model_cards"  # a clone of the repository, or an editable install


def _default_folder() -> Path:
    if INSTALLED_ADAPTERS_DIR.is_dir():
        return INSTALLED_ADAPTERS_DIR
    return CHECKOUT_ADAPTERS_DIR


SHIPPED_ADAPTERS_DIR = _default_folder()


def shipped_adapters(folder: str | os.PathLike | None = None) -> dict[str, Path]:
    """
    Short name -> folder of every shipped adapter: the subfolders of `folder` (default [`SHIPPED_ADAPTERS_DIR`]) that
    hold a `config.json`, sorted by name; empty when the folder does not exist.
    """
    root = Path(folder) if folder is not None else SHIPPED_ADAPTERS_DIR
    if not root.is_dir():
        return {}
    return {path.name: path for path in sorted(root.iterdir()) if (path / "config.json").is_file()}


def _looks_like_a_path_or_hub_id(name: str) -> bool:
    separators = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    return any(separator in name for separator in separators) or name.startswith((".", "~"))


def resolve_adapter(name_or_path: str | os.PathLike) -> str:
    """
    Where to load an adapter from, by these rules, in order:

    1. An existing folder stays that folder (even when its name is also a short name).
    2. The short name of a shipped adapter (e.g. `"smollm2-135m-arithmetic-token-budget"`) becomes its folder in
       [`SHIPPED_ADAPTERS_DIR`].
    3. A name with a path separator, or one starting with `.` or `~`, is returned as is: a Hub repo id
       (`"owner/name"`) or a path that `from_pretrained` will report missing.
    4. Any other bare name is an error naming where short names are looked up and which ones exist there: it is no
       folder, no shipped adapter, and no Hub id (a Hub repo id of an adapter has the form `"owner/name"`).

    Raises:
        `ValueError`: in case 4.
    """
    name = str(name_or_path)
    if os.path.isdir(name):
        return name
    root = SHIPPED_ADAPTERS_DIR
    shipped = shipped_adapters(root)
    if name in shipped:
        return str(shipped[name])
    if _looks_like_a_path_or_hub_id(name) or isinstance(name_or_path, os.PathLike):
        return name
    if shipped:
        found = f"which holds {', '.join(shipped)}"
    elif root.is_dir():
        found = "which holds no adapter folder (a subfolder with a config.json)"
    else:
        found = (
            "which does not exist: the shipped adapters come with a clone of the repository (model_cards/) or with "
            f"a wheel built from one (installed as {INSTALLED_ADAPTERS_DIR.relative_to(PACKAGE_DIR.parent)})"
        )
    raise ValueError(
        f"{name!r} is neither a folder nor the short name of a shipped adapter. Short names are looked up in {root}, "
        f"{found}. A Hub repo id has the form 'owner/name'."
    )
