"""Embedding extraction, pair scoring and verification metrics."""
