"""Pure torch pieces of policy optimisation: advantages, KL, losses, shaping.

Nothing here imports transformers, accelerate or vllm: each function is a
small formula with its source in the docstring and a unit test against an
independent computation.
"""
