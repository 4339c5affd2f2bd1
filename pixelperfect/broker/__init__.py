"""What the producer, the workers and the monitor agree on across processes, below all of them: the Celery
application and its delivery settings (``celery_app``), the task, queue and stage names (``names``). The producer
publishes by task name and never imports the worker's tasks; ``celery -A pixelperfect.worker.app worker`` loads the
same application with the worker's tasks and signals."""
