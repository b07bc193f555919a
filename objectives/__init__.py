"""Objectives: preferences, scalarizations, preference losses, rewards and Pareto indicators.

All objectives are MAXIMISED; the one sign flip into pymoo/moocore lives in ``pareto.py``.
"""

from .features import CausalLMFeaturizer, Featurizer, SentenceEncoder
from .losses import (
    beta_dpo,
    beta_dpo_beta,
    cpo_loss,
    dpo_loss,
    hinge_loss,
    implicit_reward,
    ipo_loss,
    margin_dpo_loss,
    orpo_loss,
    repo_loss,
    simpo_loss,
)
from .pareto import (
    expected_utility,
    hypervolume,
    hypervolume_info,
    igd_plus,
    inner_product,
    non_dominated,
    spacing,
    sparsity,
)
from .preferences import PreferenceVector, sample_simplex, simplex_grid, validate_preferences
from .scalarization import augmented_tchebycheff, linear, tchebycheff
from .rewards import (BradleyTerryReward, BrevityReward, GroupPreferenceReward, LengthReward, Reward,
                      pairwise_accuracy)
