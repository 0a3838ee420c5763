"""Serving components: generation (the engine and HTTP API come later)."""
