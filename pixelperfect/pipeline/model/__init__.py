"""The model stage: segmenters behind one protocol (``protocol.Segmenter``): encode a group of preprocessed images
once, then decode every prompt of an image in one call. ``builder.build_segmenter`` picks one by name: ``sam``
(Segment Anything v1), ``grabcut`` (the classical baseline); ``weights`` holds SAM's architectures, checkpoints and
the small ``sam_tiny``."""
