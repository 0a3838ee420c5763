"""Models: presets with random weights, local Hugging Face folders, PEFT adapters."""
