"""Reward models: losses, score reading, PRM labelling and aggregation."""
