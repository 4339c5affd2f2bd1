"""Pure stages: bytes and arrays in, result records and mask PNG bytes out. No I/O, no Celery, no database."""
