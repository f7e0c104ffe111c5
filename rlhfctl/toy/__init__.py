"""The built-in toy world: an arithmetic task, a fixed tokenizer, model sizes."""
