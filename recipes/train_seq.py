"""Train a sequence-level decoding adapter (Section 2.2): one action per prompt, from [e; B], shared by B samples.

    accelerate launch recipes/train_seq.py                                   # embedded default model, built-in tasks
    accelerate launch recipes/train_seq.py --config recipes/configs/train_seq.yaml --reward_aggregation pass@1
    python recipes/train_seq.py --resume_from_checkpoint true                # continue a killed run

Without --config, the settings of configs/train_seq.yaml apply. Every field of `AdapterTrainerConfig` and of the
script arguments can be set in the YAML file or on the command line.
"""

from pathlib import Path

from _training import main

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "train_seq.yaml"


if __name__ == "__main__":
    main("sequence", DEFAULT_CONFIG)
