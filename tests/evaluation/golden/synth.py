"""Archive-sized runs synthesised in PostgreSQL from a real small run of the golden fixture (no model, no files).

:func:`clone_run` makes a run of ``images`` images, four segments each (the source's two variants × prompts 0 and
1), by ``INSERT … SELECT`` over ``generate_series``: image ``g`` copies source image ``g mod k`` (its key prefixed
by ``g``), its annotations and its first segment per variant, with score, stability, consistency and Dice moved by
a deterministic jitter so values differ from copy to copy; one image in 50 is a failure. Used by the EXPLAIN test
(``tests/db/test_queries_plans.py``) and the P13/P14 benchmarks.
"""

from __future__ import annotations

from sqlalchemy import create_engine, text

#: Columns moved by the jitter: value + (h / 1000 - 0.5) × 0.1, clamped to [0, 1] (consistency std: to >= 0).
_JITTERED = ("score", "stability", "consistency_iou", "consistency_iou_base", "dice", "iou", "box_iou", "box_dice")
_COPIED = ("prompt_kind", "prompt", "scores", "chosen", "perturbations", "area", "mask_boxes", "mask_key", "nsd",
           "hd95", "inside_box")  # fmt: skip
_IMAGE_COPIED = ("attempts", "content_sha256", "size_bytes", "width", "height", "meta", "timings", "worker_host",
                 "gt_mask_key", "created_at")  # fmt: skip


def clone_run(url: str, *, source: str, name: str, images: int, analyze: bool = True) -> int:
    """Create run ``name`` with ``images`` images cloned from run ``source`` (PostgreSQL only); returns its id."""
    if images < 1:
        raise ValueError(f"images must be >= 1, got {images}")
    engine = create_engine(url)
    h = "((i.g * 7919 + pp.p * 104729) % 1000)"
    jitter = {c: f"least(1.0, greatest(0.0, s.{c} + ({h} / 1000.0 - 0.5) * 0.1))" for c in _JITTERED}
    jitter["consistency_std"] = f"greatest(0.0, s.consistency_std * (0.5 + {h} / 1000.0))"
    try:
        with engine.begin() as conn:
            src = conn.execute(text("SELECT id FROM runs WHERE name = :n"), {"n": source}).scalar_one()
            rid = conn.execute(
                text(
                    "INSERT INTO runs (name, created_at, source_url, store_url, model, checkpoint, checkpoint_sha256,"
                    " variants, prompt_mode, settings, code_version, config_hash, kind)"
                    " SELECT :name, created_at, source_url, store_url, model, checkpoint, checkpoint_sha256,"
                    " variants, prompt_mode, settings, code_version, :name, kind FROM runs WHERE id = :src"
                    " RETURNING id"
                ),
                {"name": name, "src": src},
            ).scalar_one()
            conn.execute(
                text(
                    "CREATE TEMP TABLE src_img ON COMMIT DROP AS SELECT row_number() OVER (ORDER BY id) - 1 AS rn, *"
                    " FROM images WHERE run_id = :src AND status = 'done' AND n_segments > 0"
                ),
                {"src": src},
            )
            k = conn.execute(text("SELECT count(*) FROM src_img")).scalar_one()
            if not k:
                raise ValueError(f"run {source!r} has no done image to clone")
            cols = ", ".join(_IMAGE_COPIED)
            conn.execute(
                text(
                    f"INSERT INTO images (run_id, key, status, error_reason, error, n_segments, finished_at, {cols})"
                    " SELECT :rid, lpad(g::text, 8, '0') || '/' || s.key,"
                    " CASE WHEN g % 50 = 49 THEN 'failed' ELSE 'done' END,"
                    " CASE WHEN g % 50 = 49 THEN (ARRAY['truncated', 'not_an_image'])[1 + g % 100 / 50] END,"
                    " CASE WHEN g % 50 = 49 THEN 'synthetic failure' END,"
                    " CASE WHEN g % 50 = 49 THEN NULL ELSE 4 END,"
                    f" s.finished_at + g * interval '1 millisecond', {', '.join('s.' + c for c in _IMAGE_COPIED)}"
                    " FROM generate_series(0, :n - 1) AS g JOIN src_img s ON s.rn = g % :k"
                ),
                {"rid": rid, "n": images, "k": k},
            )
            conn.execute(
                text(
                    "INSERT INTO annotations (run_id, image_key, index, kind, x1, y1, x2, y2, label)"
                    " SELECT :rid, lpad(g::text, 8, '0') || '/' || a.image_key, a.index, a.kind, a.x1, a.y1, a.x2,"
                    " a.y2, a.label FROM generate_series(0, :n - 1) AS g JOIN src_img s ON s.rn = g % :k"
                    " JOIN annotations a ON a.run_id = :src AND a.image_key = s.key"
                ),
                {"rid": rid, "n": images, "k": k, "src": src},
            )
            conn.execute(
                text(
                    "CREATE TEMP TABLE src_seg ON COMMIT DROP AS SELECT DISTINCT ON (im.rn, sg.variant) im.rn,"
                    " sg.* FROM segments sg JOIN src_img im ON im.id = sg.image_id"
                    " ORDER BY im.rn, sg.variant, sg.prompt_index"
                )
            )
            names = [*_COPIED, *jitter]
            values = [f"s.{c}" for c in _COPIED] + list(jitter.values())
            conn.execute(
                text(
                    f"INSERT INTO segments (run_id, image_id, variant, prompt_index, {', '.join(names)})"
                    f" SELECT :rid, i.id, s.variant, pp.p, {', '.join(values)}"
                    " FROM (SELECT id, left(key, 8)::bigint AS g FROM images WHERE run_id = :rid AND status = 'done') i"
                    " JOIN src_seg s ON s.rn = i.g % :k CROSS JOIN (VALUES (0), (1)) AS pp(p)"
                ),
                {"rid": rid, "k": k},
            )
        if analyze:
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                for table in ("runs", "images", "segments", "annotations"):
                    conn.execute(text(f"VACUUM ANALYZE {table}"))
        return int(rid)
    finally:
        engine.dispose()
