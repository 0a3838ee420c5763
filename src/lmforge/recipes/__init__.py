"""The stages a user runs; one module per recipe, each with run(config)."""
