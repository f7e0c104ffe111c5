"""Training loops (SFT, reward models, policy) on accelerate."""
