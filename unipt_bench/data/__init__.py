"""Real datasets in their published formats, tokenizers and image loading; no downloads."""
