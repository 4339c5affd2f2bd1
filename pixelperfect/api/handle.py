"""``pixelperfect.Run``: one run from a notebook — its configuration and status, its images and segments as
pandas DataFrames, its masks and images as arrays, a figure of one image, and its comparisons.

Reads go through the evaluation's bulk column path (:mod:`pixelperfect.db.frames` over
:mod:`pixelperfect.db.streams`), never one ORM object per segment, and see what is committed: a run still being
written returns what is finished so far. Images are decoded and preprocessed by the pipeline's own code from the
run's stored variant specs (checked against their stored hashes), so :meth:`Run.image` is what the model saw.
Nothing here imports torch; OpenCV and matplotlib load on the first call that needs them.
"""

from __future__ import annotations

import functools
import html
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from pixelperfect.config import Settings

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    from matplotlib.figure import Figure


class MaskMissingError(LookupError):
    """A segment row names a mask object the store does not have (deleted, or a store that was moved)."""


#: Colours of the mask overlays in :meth:`Run.show`, in prompt order (RGB, 0..1).
OVERLAY_COLOURS = ((0.90, 0.16, 0.16), (0.12, 0.47, 0.71), (0.58, 0.40, 0.74), (1.0, 0.50, 0.05), (0.55, 0.34, 0.29))


def _lookup_run(settings: Settings, name: str) -> Any:
    from sqlalchemy import inspect

    from pixelperfect.db import repo
    from pixelperfect.db.session import get_engine, session_scope
    from pixelperfect.producer.lifecycle import unknown_run

    if not inspect(get_engine(settings.database_url)).has_table("runs"):
        raise unknown_run(name, [])
    with session_scope(settings.database_url) as session:
        row = repo.get_run(session, name=name)
        if row is None:
            raise unknown_run(name, [r.name for r in repo.list_runs(session)])
        return {
            "id": row.id,
            "name": row.name,
            "model": row.model,
            "checkpoint": row.checkpoint,
            "checkpoint_sha256": row.checkpoint_sha256,
            "source_url": row.source_url,
            "store_url": row.store_url,
            "variants": [dict(v) for v in row.variants],
            "prompt_mode": row.prompt_mode,
            "settings": dict(row.settings or {}),
            "code_version": row.code_version,
            "created_at": row.created_at,
            "kind": row.kind,
        }


class Run:
    """A run by name (``pixelperfect.run(name)``); its configuration is read once, its results on each call."""

    def __init__(self, name: str, settings: Settings) -> None:
        self.settings = settings
        self.config: dict[str, Any] = _lookup_run(settings, name)
        self.name: str = self.config["name"]
        self.id: int = self.config["id"]

    def __repr__(self) -> str:
        return f"<pixelperfect.Run {self.name!r}: {self.config['model']} × {', '.join(self.variants)}>"

    @property
    def variants(self) -> list[str]:
        """The run's variant names, in the order they were submitted."""
        return [v["name"] for v in self.config["variants"]]

    @property
    def baseline(self) -> str:
        """The variant the report compares the others with: ``raw`` if the run has it, else its first."""
        return "raw" if "raw" in self.variants else self.variants[0]

    # --- status ----------------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """``pixelperfect status RUN --json``'s numbers: images by status, segments, failures, images/s, ETA."""
        from pixelperfect.monitor import run_status

        return dict(run_status(self.name, self.settings))

    def wait(self, *, progress: bool = True, timeout: float | None = None, interval: float = 1.0) -> Run:
        """Block until no image of the run is queued (a rich progress bar in the notebook with ``progress``);
        ``TimeoutError`` after ``timeout`` seconds. Returns the run."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = task = None
        if progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            bar = Progress("run " + self.name, BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
            bar.start()
            task = bar.add_task(self.name, total=None)
        try:
            while True:
                counts = self.status()["images"]
                finished = sum(n for s, n in counts.items() if s != "queued")
                if bar is not None and task is not None:
                    bar.update(task, completed=finished, total=sum(counts.values()))
                if counts.get("queued", 0) == 0:
                    return self
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"run {self.name!r} still has {counts['queued']} queued images")
                time.sleep(interval)
        finally:
            if bar is not None:
                bar.stop()

    def cancel(self) -> Any:
        """``pixelperfect cancel``: queued images become cancelled, in-flight batches finish
        (:class:`pixelperfect.producer.lifecycle.CancelResult`)."""
        from pixelperfect.producer.lifecycle import cancel

        return cancel(self.name, self.settings)

    def _repr_html_(self) -> str:
        try:
            info = self.status()
            counts = info["images"]
            status = ", ".join(f"{n} {s}" for s, n in counts.items()) + f"; {info['segments']} segments"
            if info["failures"]:
                status += "; failures: " + ", ".join(f"{r}: {n}" for r, n in sorted(info["failures"].items()))
        except Exception as exc:  # a display must not raise
            status = f"status unavailable: {exc}"
        c = self.config
        rows = [
            ("run", c["name"]),
            ("model", c["model"] + (f" ({c['checkpoint']})" if c["checkpoint"] else "")),
            ("variants", "; ".join(f"{v['name']} = {v['spec']}" for v in c["variants"])),
            ("prompts", c["prompt_mode"]),
            ("source", c["source_url"]),
            ("masks", c["store_url"]),
            ("code", c["code_version"]),
            ("status", status),
        ]
        body = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'>{html.escape(str(v))}"
            "</td></tr>"
            for k, v in rows
        )
        return f"<table class='pixelperfect-run'>{body}</table>"

    # --- results as DataFrames -------------------------------------------------------------------------------

    def _check_variant(self, variant: str) -> None:
        from pixelperfect.producer.lifecycle import unknown

        if variant not in self.variants:
            raise unknown("variant", variant, self.variants, none="the run has no variants")

    def images(self, *, status: str | Sequence[str] | None = None) -> pd.DataFrame:
        """One row per image (key, status, error_reason, width, height, n_segments, finished_at) in key order;
        ``status``: only images with this status (or these)."""
        import pandas as pd

        from pixelperfect.db.frames import image_rows
        from pixelperfect.db.session import session_scope

        statuses = [status] if isinstance(status, str) else status
        with session_scope(self.settings.database_url) as session:
            cols = image_rows(session, run_id=self.id, statuses=statuses)
        df = pd.DataFrame(cols)
        df["status"] = pd.Categorical(df["status"], categories=["queued", "done", "failed", "cancelled"])
        return df

    def segments(
        self,
        variant: str | None = None,
        columns: Sequence[str] | None = None,
        where: Mapping[str, tuple[float | None, float | None]] | None = None,
        *,
        as_arrow: bool = False,
    ) -> Any:
        """The segments of the run's done images as a DataFrame, one row per prompt and variant, in image (key)
        then prompt order: ``run``, ``key``, ``variant`` and ``prompt_kind`` categoricals, float32 measures.

        ``variant``: one variant (default: all); ``columns``: a subset of :data:`pixelperfect.db.frames.
        SEGMENT_COLUMNS` (plus ``run``); ``where``: ``{column: (low, high)}`` ranges applied in the database
        (inclusive, ``None`` open). ``as_arrow``: a ``pyarrow.Table`` (needs pyarrow).
        """
        import pandas as pd

        from pixelperfect.db.frames import DEFAULT_COLUMNS, PROMPT_KINDS, SEGMENT_COLUMNS, image_keys, variant_columns
        from pixelperfect.db.session import session_scope

        wanted = list(columns) if columns is not None else ["run", *DEFAULT_COLUMNS]
        known = ["run", *SEGMENT_COLUMNS]
        bad = [c for c in wanted if c not in known]
        if bad:
            from pixelperfect.producer.lifecycle import unknown

            raise unknown("column", bad[0], known)
        variants = [variant] if variant is not None else self.variants
        for v in variants:
            self._check_variant(v)
        with session_scope(self.settings.database_url) as session:
            ids, keys = image_keys(session, run_id=self.id) if "key" in wanted else (np.zeros(0, np.int64), None)
            cols, lengths = variant_columns(session, run_id=self.id, variants=variants, columns=wanted, ranges=where)
        n = sum(lengths)
        data: dict[str, Any] = {}
        for name in wanted:
            if name == "run":
                data[name] = pd.Categorical.from_codes(np.zeros(n, np.int8), categories=[self.name])
            elif name == "variant":
                codes = np.repeat(np.arange(len(variants), dtype=np.int16), lengths)
                data[name] = pd.Categorical.from_codes(codes, categories=variants)
            elif name == "key":
                image_id = cols["image_id"] if n else np.zeros(0, np.int64)
                data[name] = pd.Categorical.from_codes(np.searchsorted(ids, image_id).astype(np.int32), categories=keys)
            elif name == "prompt_kind":
                codes = cols["prompt_kind"] if n else np.zeros(0, np.int8)
                data[name] = pd.Categorical.from_codes(codes, categories=list(PROMPT_KINDS))
            else:
                values = cols[name] if n else np.zeros(0, np.float32)
                if name in ("prompt_index", "area", "chosen"):
                    data[name] = pd.array(values, dtype="Int64") if np.isnan(values).any() else values.astype(np.int64)
                else:
                    data[name] = values
        cols.clear()
        df = pd.DataFrame(data, columns=wanted)
        if not as_arrow:
            return df
        try:
            import pyarrow as pa
        except ImportError as exc:  # pragma: no cover - pyarrow is in the [arrow] and [dev] extras
            raise ImportError("as_arrow=True needs pyarrow: pip install 'pixelperfect[arrow]'") from exc
        return pa.Table.from_pandas(df, preserve_index=False)

    # --- masks, images, figures ------------------------------------------------------------------------------

    def _image_row(self, key: str) -> dict[str, Any]:
        from pixelperfect.db.frames import close_keys, image_row
        from pixelperfect.db.session import session_scope
        from pixelperfect.producer.lifecycle import unknown

        with session_scope(self.settings.database_url) as session:
            row = image_row(session, run_id=self.id, key=key)
            if row is None:
                raise unknown("image key", key, close_keys(session, run_id=self.id, key=key),
                              none=f"run {self.name!r} has no images")  # fmt: skip
        return row

    def _segments_of(self, key: str, variant: str) -> list[dict[str, Any]]:
        from pixelperfect.db.frames import segment_objects
        from pixelperfect.db.session import session_scope

        self._check_variant(variant)
        row = self._image_row(key)
        if row["status"] != "done":
            reason = f" ({row['error_reason']})" if row["error_reason"] else ""
            raise LookupError(f"image {key!r} of run {self.name!r} is {row['status']}{reason}: it has no masks")
        with session_scope(self.settings.database_url) as session:
            return segment_objects(session, run_id=self.id, key=key, variant=variant)

    def _read_mask(self, url: str, what: str) -> np.ndarray:
        import cv2

        from pixelperfect.storage import ObjectNotFoundError, read_url

        try:
            data = read_url(url, endpoint_url=self.settings.s3_endpoint_url, settings=self.settings)
        except (ObjectNotFoundError, FileNotFoundError) as exc:
            raise MaskMissingError(f"{what}: the mask object {url} is missing from the store") from exc
        mask = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise MaskMissingError(f"{what}: the mask object {url} does not decode as a PNG")
        return mask > 0

    def mask(self, key: str, variant: str, prompt: int = 0) -> np.ndarray:
        """The mask of prompt ``prompt`` of image ``key`` in ``variant`` as an ``(H, W)`` bool array at the
        image's original size. ``LookupError`` (naming close matches) for an unknown key, variant or prompt;
        :class:`MaskMissingError` naming the key when the row's mask object is gone — never a blank array."""
        segments = self._segments_of(key, variant)
        found = [s for s in segments if s["prompt_index"] == prompt]
        if not found:
            from pixelperfect.producer.lifecycle import unknown

            raise unknown(f"prompt of {key} / {variant} with index", str(prompt),
                          [str(s["prompt_index"]) for s in segments], none="the image has no segments")  # fmt: skip
        url = found[0]["mask_key"]
        what = f"run {self.name!r}, image {key!r}, variant {variant!r}, prompt {prompt}"
        if not url:
            raise MaskMissingError(f"{what}: the segment row names no mask object")
        return self._read_mask(url, what)

    def image(self, key: str, variant: str) -> np.ndarray:
        """Image ``key`` decoded at full resolution and preprocessed by ``variant`` exactly as the run's workers
        did (the run's stored spec, checked against its stored hash): ``(H, W)`` uint8."""
        from pixelperfect.pipeline.decode.reader import decode_image
        from pixelperfect.pipeline.preprocess.variants import parse_variant
        from pixelperfect.storage import open_store

        self._check_variant(variant)
        self._image_row(key)
        [declared] = [v for v in self.config["variants"] if v["name"] == variant]
        built = parse_variant(f"{declared['name']}={declared['spec']}")
        if built.spec_hash != declared["hash"]:
            raise RuntimeError(
                f"variant {variant!r} hashes to {built.spec_hash} here but {declared['hash']} in run {self.name!r}: "
                "this preprocessing code differs from the code that ran it"
            )
        data = open_store(self.config["source_url"], self.settings, endpoint_url=self.settings.s3_endpoint_url).get(key)
        decoded = decode_image(data, key, max_pixels=self.settings.max_pixels)
        return built(decoded.pixels)

    def truth(self, key: str) -> np.ndarray | None:
        """The image's ground-truth mask (bool, original size), or ``None`` when the run has none for it."""
        row = self._image_row(key)
        if not row["gt_mask_key"]:
            return None
        return self._read_mask(row["gt_mask_key"], f"run {self.name!r}, ground truth of {key!r}")

    def show(self, key: str, variant: str, *, prompts: Sequence[int] | None = None) -> Figure:
        """A matplotlib figure of image ``key`` as ``variant`` preprocessed it: each mask as a coloured overlay
        (one image layer per mask), each prompt box (solid) with its jittered boxes (dashed), the ground-truth
        outline when there is one, and the scores (and Dice) in the legend. ``prompts``: only these indices."""
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch, Rectangle

        segments = self._segments_of(key, variant)
        if prompts is not None:
            segments = [s for s in segments if s["prompt_index"] in set(prompts)]
        pixels = self.image(key, variant)
        truth = self.truth(key)
        fig = _figure_class()(figsize=(6, 6 * pixels.shape[0] / max(pixels.shape[1], 1)))
        ax = fig.add_subplot()
        ax.imshow(pixels, cmap="gray", vmin=0, vmax=255)
        handles: list[Any] = []
        for i, seg in enumerate(segments):
            colour = OVERLAY_COLOURS[i % len(OVERLAY_COLOURS)]
            mask = self.mask(key, variant, seg["prompt_index"])
            rgba = np.zeros((*mask.shape, 4), np.float32)
            rgba[mask] = (*colour, 0.45)
            ax.imshow(rgba, interpolation="nearest")
            prompt = seg["prompt"] or []
            if len(prompt) == 4:
                x1, y1, x2, y2 = (float(v) for v in prompt)
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, lw=1.5))
            elif len(prompt) == 2:
                ax.plot([float(prompt[0])], [float(prompt[1])], marker="+", color=colour, ms=12)
            for p in seg["perturbations"] or []:
                x1, y1, x2, y2 = (float(v) for v in p[:4])
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, lw=0.6, ls="--"))
            label = f"prompt {seg['prompt_index']}: score {_num(seg['score'])}"
            if seg["dice"] is not None:
                label += f", Dice {_num(seg['dice'])}"
            handles.append(Patch(facecolor=(*colour, 0.45), edgecolor=colour, label=label))
        if truth is not None:
            ax.contour(truth.astype(np.uint8), levels=[0.5], colors=["#3cc83c"], linewidths=1.2)
            handles.append(Line2D([], [], color="#3cc83c", label="ground truth"))
        ax.set_title(f"{self.name} / {variant} — {key}", fontsize=9)
        ax.set_axis_off()
        if handles:
            ax.legend(handles=handles, loc="lower right", fontsize=8, framealpha=0.8)
        fig.tight_layout()
        return fig

    def compare(self, variant: str, against: str | None = None, metric: str | None = None) -> pd.DataFrame:
        """:func:`pixelperfect.compare` of ``variant`` against ``against`` (default: the run's baseline)."""
        from pixelperfect.api.pairs import compare_frame

        return compare_frame((self.name, against or self.baseline), (self.name, variant), metric, self.settings)


@functools.cache
def _figure_class() -> type[Figure]:
    """A matplotlib ``Figure`` that shows itself in Jupyter as a PNG (``_repr_png_``) without pyplot: no global
    figure state, no second copy from the inline backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    class RunFigure(Figure):
        def _repr_png_(self) -> bytes:
            import io

            buf = io.BytesIO()
            FigureCanvasAgg(self).print_png(buf)
            return buf.getvalue()

    return RunFigure


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"
