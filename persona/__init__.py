"""Parsona: a user's own data turned into tensors and text (encoders, retrieval, rules, group predictors)."""
