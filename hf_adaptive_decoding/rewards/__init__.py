"""Verifiable rewards: math answers (math-verify in a killable worker), code tests in a bubblewrap sandbox, and the
guarded way trainers call any TRL-style reward function. Importing it costs neither torch nor transformers."""
