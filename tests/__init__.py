"""Test suite of recursive-latent."""
