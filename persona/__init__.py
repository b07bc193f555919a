"""Parsona: a user's own data turned into tensors and text.

* :class:`HistoryEncoder`: history texts -> (n, d) unit vectors (all-MiniLM-L6-v2 by default).
* :class:`NeighborIndex`: nearest neighbours by inner product on faiss (exact, IVF or HNSW).
* :class:`UserProfile`: what is known about one user (history count, persona, updated time); no I/O.
* :func:`input_aware_persona`: Persona-Plug's pooling of the history given the current input.
* :func:`expert_weights`: SG-LoRA's top-K softmax weights over a bank of expert descriptions.
* :class:`SteeringRules`: plain-language rules about how a user writes, mined from their texts against
  a population (the preference agent's statistical learner).
* :class:`RulesAgent`: the preference agent's other learner: a large model's rules from its drafts vs the
  user's texts, a small model that writes them per intent.

* :class:`GroupPreferencePredictor`: GPO, a group's answers to new questions from its answers to a few, with
  no gradient step (a transformer meta-trained across groups).
"""

from parsona.persona.encoder import HistoryEncoder, check_texts, save_tiny_encoder
from parsona.persona.experts import expert_weights
from parsona.persona.group_predictor import (GroupPreferencePredictor, Question, alignment, option_text,
                                             preference_from_answers)
from parsona.persona.index import NeighborIndex, unit_rows
from parsona.persona.pooling import TAU, input_aware_persona
from parsona.persona.profile import UserProfile
from parsona.persona.rules import SteeringRules
from parsona.persona.agent import RulesAgent

__all__ = ["TAU", "GroupPreferencePredictor", "HistoryEncoder", "Question", "alignment", "option_text", "preference_from_answers", "NeighborIndex", "RulesAgent", "SteeringRules", "UserProfile", "check_texts", "expert_weights",
           "input_aware_persona",
           "save_tiny_encoder", "unit_rows"]
