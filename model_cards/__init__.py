"""Model cards for recursive-latent checkpoints."""
