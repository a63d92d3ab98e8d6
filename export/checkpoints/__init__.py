"""Import of official (third-party) checkpoints into our modules, by key mapping with strict checks."""
