"""The producer: list image keys, import annotations, create or resume a run, enqueue batches."""
