"""REINFORCE training of decoding adapters: config, trainer, objectives, checkpoints, metrics, plots and cards."""
