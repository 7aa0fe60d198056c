"""Context: what the model sees each tick, within a token budget."""
