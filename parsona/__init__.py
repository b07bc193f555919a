"""Parsona: adapt one language model to many users and many objectives at once.

Importing ``parsona`` is cheap on purpose: it loads no model, no torch, no web framework.
The pieces live in submodules and subpackages:

- ``parsona.adapters``   change the forward pass (preference LoRA, per-user LoRA, ...)
- ``parsona.objectives`` score and trade off (losses, rewards, scalarization, Pareto indicators)
- ``parsona.persona``    turn a user's own data into tensors and text
- ``parsona.base_model`` load the base model (SmolLM2 by default)
"""

__version__ = "0.1.0"
