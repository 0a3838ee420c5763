"""Text utilities shared by the data blocks: scripts, CJK-aware word segmentation, n-grams."""
