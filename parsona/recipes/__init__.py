"""Training recipes: one script per method, a typed ``Config`` and ``main(cfg)`` read top to bottom."""
