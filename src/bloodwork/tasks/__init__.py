"""Tasks: what the agent must do and the hidden verifier that judges it."""
