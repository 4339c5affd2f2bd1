"""Names that cross a process boundary: Celery task names (what a message asks for), queue names (who takes it), and
the stage names of an image's timings (``Image.timings`` keys, the ``pixelperfect_image_stage_seconds`` metric's
``stage`` label and ``pixelperfect status``'s stage shares). Imports nothing."""

from __future__ import annotations

#: ``segment_batch(run_id: int, keys: list[str])``: the images ``keys`` of run ``run_id``, on :data:`GPU_QUEUE`.
SEGMENT_BATCH = "pixelperfect.segment_batch"
#: ``build_segs(run_id: int, image_ids: list[int])``: their DICOM-SEGs from the stored masks, on :data:`SEG_QUEUE`.
BUILD_SEGS = "pixelperfect.build_segs"
#: ``train(config: dict)``: a fine-tuning (``TrainConfig.as_dict()``), on :data:`TRAIN_QUEUE`.
TRAIN = "pixelperfect.train"

GPU_QUEUE = "gpu"
#: DICOM-SEG building, off the GPU worker's critical path (CPU-only workers may take it).
SEG_QUEUE = "seg"
TRAIN_QUEUE = "train"
#: Each task's queue.
ROUTES: dict[str, str] = {SEGMENT_BATCH: GPU_QUEUE, BUILD_SEGS: SEG_QUEUE, TRAIN: TRAIN_QUEUE}

#: Per-image stages recorded in ``Image.timings`` (seconds), in pipeline order: fetch, decode, preprocessing, image
#: encoder (the image's share of a batched call), prompt decoder, ``post`` (scoring, mask PNGs), upload, database.
STAGES: tuple[str, ...] = ("download", "decode", "preprocess", "encode", "prompts", "post", "upload", "db")
