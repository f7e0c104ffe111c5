"""Evaluation metrics (pass@k, maj@k)."""
