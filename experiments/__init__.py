"""featbank.experiments."""
