"""Dataset readers, validators and preparation."""
