"""Zalo-style speaker verification pipeline: prepare, folds, train, embed, score, stack, submit."""
