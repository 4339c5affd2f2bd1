"""The worker: Celery app and thin tasks, per-process runtime, and ``run_batch`` shared with embedded mode."""
