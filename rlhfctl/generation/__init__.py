"""Generation backends behind one small protocol (`base.Generator`)."""
