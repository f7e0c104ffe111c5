# A package, so that tests/rl/test_losses.py and tests/rm/test_losses.py can share a basename.
