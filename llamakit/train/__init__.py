"""Fine-tuning and evaluation stages (torch imported lazily by each module)."""
