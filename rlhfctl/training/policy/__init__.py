"""`train-policy`: PPO (with a critic) or GRPO (critic-free) on prompts.

Each step: sample n responses for `prompts_per_step` prompts with the current
policy (through the generation protocol), score them (verifier and/or ORM),
shape the scores (standardise → normalise → clip → shrink), compute
advantages (GAE for PPO, group-normalised for GRPO), then `ppo_epochs` passes
of clipped-objective mini-batch updates. The KL to the frozen reference goes
into the reward or the loss, with any of k1/k2/k3.
"""
