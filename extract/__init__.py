"""featbank.extract."""
