"""Export: merging adapters into plain Hugging Face models."""
