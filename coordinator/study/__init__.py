"""The coordinator study: conditions, seeds, external evaluation and its statistics."""
