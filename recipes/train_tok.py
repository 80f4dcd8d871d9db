"""Train a token-level decoding adapter (Section 2.3): an action per generated token, from [h_t; b_t].

    accelerate launch recipes/train_tok.py                                   # embedded default model, built-in tasks
    accelerate launch recipes/train_tok.py --config recipes/configs/train_tok.yaml --max_steps 500
    python recipes/train_tok.py --resume_from_checkpoint true                # continue a killed run

Without --config, the settings of configs/train_tok.yaml apply. Every field of `AdapterTrainerConfig` and of the
script arguments can be set in the YAML file or on the command line.
"""

from pathlib import Path

from _training import main

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "train_tok.yaml"


if __name__ == "__main__":
    main("token", DEFAULT_CONFIG)
