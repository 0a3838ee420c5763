"""Training: example encoding, packing, objectives, optimiser, checkpoints, the loop."""
