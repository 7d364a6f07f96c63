"""featbank.heads."""
