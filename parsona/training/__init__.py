"""The training library: what every recipe's loop is made of, so recipes stay short scripts.

    front_data.py   the HH pairs labelled under several objectives; the recipes' training split
    step.py         one preference step: labels, per-objective losses, scalarization, backward
    sampling.py     which pairs and which λ a step gets (seeded by step: resumable without RNG state)
    checkpoints.py  resumable checkpoints, and what a rerun in the same output_dir may do
    base.py         the Accelerator and the frozen fp32 base model every recipe starts from
    preference.py   setup(cfg): everything the preference-LoRA recipe builds before its loop

Nothing here imports ``parsona.recipes`` (the layering test enforces it): recipes call the
library, never the other way round, and benchmarks call the same ``setup`` the recipe does.
"""
