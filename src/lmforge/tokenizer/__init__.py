"""Tokenizers: training with the tokenizers library, chat templates."""
