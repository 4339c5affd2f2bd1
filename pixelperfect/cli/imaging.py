"""Imaging commands: ``phantoms`` (synthetic X-rays), ``tune`` (parameter search for one step), ``preview``."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import typer
from rich.table import Table

from pixelperfect.cli.common import console, err, fail


def register(app: typer.Typer) -> None:
    """Add ``phantoms``, ``tune`` and ``preview`` to the ``pixelperfect`` command."""
    app.command("phantoms")(phantoms)
    app.command("tune")(tune)
    app.command("preview")(preview)


def phantoms(
    out: Path = typer.Argument(..., help="output directory (images/, masks/, labels.csv)"),
    n: int = typer.Option(16, "--n", min=1, help="number of phantom X-rays"),
    seed: int = typer.Option(0, help="random seed (same seed, same phantoms)"),
    size: int = typer.Option(1024, min=64, help="image side in pixels"),
    fmt: str = typer.Option("png", "--format", help="png or dicom"),
) -> None:
    """Write synthetic chest X-rays with exact opacity masks and RSNA-format boxes."""
    from pixelperfect.synthetic.phantoms import write_phantoms

    if fmt not in ("png", "dicom"):
        fail(f"--format must be png or dicom, not {fmt!r}")
    made = write_phantoms(out, n, seed=seed, size=size, fmt=fmt)  # type: ignore[arg-type]
    boxes = sum(len(p.boxes) for p in made)
    console.print(
        f"wrote {len(made)} phantoms ({boxes} opacity boxes) to {out}/images, masks in {out}/masks, "
        f"labels in {out}/labels.csv"
    )


def sample_keys(keys: Iterator[str], n: int, seed: int) -> list[str]:
    """A uniform sample of ``n`` keys from a stream of any length (reservoir sampling), sorted; deterministic
    for ``seed`` and the stream's order."""
    rng = random.Random(seed)
    sample: list[str] = []
    for i, key in enumerate(keys):
        if i < n:
            sample.append(key)
        else:
            j = rng.randint(0, i)
            if j < n:
                sample[j] = key
    return sorted(sample)


def _load_sample(source: str, n: int, seed: int, max_side: int) -> tuple[list[np.ndarray], list[str]]:
    """Decode a sample of the images under ``source`` (directory, ``file://`` or ``s3://`` URL)."""
    import cv2

    from pixelperfect.pipeline.decode.reader import ImageDecodeError, decode_image
    from pixelperfect.pipeline.preprocess.variants import to_uint8
    from pixelperfect.storage import is_image_key, open_store

    if "://" not in source and not Path(source).is_dir():
        fail(f"{source} is not a directory")
    store = open_store(source)
    keys = sample_keys((k for k in store.list() if is_image_key(k)), n, seed)
    images, failures = [], []
    for key in keys:
        try:
            pixels = to_uint8(decode_image(store.get(key), key).pixels)
        except ImageDecodeError as exc:
            failures.append(f"{key}: {exc.reason}")
            continue
        if max_side and max(pixels.shape) > max_side:
            scale = max_side / max(pixels.shape)
            size = (max(1, round(pixels.shape[1] * scale)), max(1, round(pixels.shape[0] * scale)))
            pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
        images.append(pixels)
    return images, failures


def tune(
    source: str = typer.Argument(..., help="directory, file://dir or s3://bucket/prefix of images"),
    step: str = typer.Option(..., "--step", help="preprocessing step to tune, e.g. gaussian"),
    param: list[str] = typer.Option([], "--param", help="name=start:stop:step or name=a,b,c; repeat for a grid"),
    fixed: list[str] = typer.Option([], "--set", help="name=value held fixed; repeat"),
    sample: int = typer.Option(16, "--sample", min=1, help="images to score (a seeded uniform sample)"),
    seed: int = typer.Option(0, help="sampling seed"),
    max_side: int = typer.Option(1024, help="downscale larger images to this long side first (0: never)"),
    save: str | None = typer.Option(None, "--save", help="save the best setting under this variant name"),
    by: str = typer.Option("ssim", "--by", help="with --save: the criterion whose best is saved: ssim or entropy"),
    variants_file: Path = typer.Option(
        Path("pixelperfect-variants.toml"), help="where --save writes (submit --variant NAME reads it)"
    ),
) -> None:
    """Score each setting of one step by SSIM to the original and entropy change, as the research did; print each
    criterion's best as a ready --variant spec, and --save it under a name for submit."""
    from pixelperfect.pipeline.preprocess.tune import build_grid, parse_param_range, score_steps
    from pixelperfect.pipeline.preprocess.variants import parse_value

    if by not in ("ssim", "entropy"):
        fail(f"--by must be ssim or entropy, not {by!r}")
    try:
        ranges = [parse_param_range(text) for text in param]
        held = {}
        for text in fixed:
            name, sep, value = text.partition("=")
            if not sep:
                raise ValueError(f"--set {text!r} must be written name=value")
            held[name.strip()] = parse_value(value)
        grid = build_grid(step, ranges, held)
    except ValueError as exc:
        fail(str(exc))
    images, failures = _load_sample(source, sample, seed, max_side)
    for failure in failures:
        err.print(f"[yellow]skipped[/] {failure}")
    if not images:
        fail(f"no decodable images under {source}")
    rows = score_steps(images, grid.steps)
    best_ssim = max(rows, key=lambda r: r.ssim_mean)
    best_entropy = max(rows, key=lambda r: r.entropy_delta_mean)
    table = Table(title=f"tune {step} on {len(images)} images from {source}")
    for column in ("setting", "SSIM to original", "Δ entropy (bits)", "ms / image", ""):
        table.add_column(column, justify="left" if column in ("setting", "") else "right")
    for row in rows:
        varied = {name: row.params[name] for name, _ in ranges} or row.params
        marks = ", ".join(m for m, best in (("best SSIM", best_ssim), ("most entropy", best_entropy)) if row is best)
        table.add_row(
            ",".join(f"{k}={v}" for k, v in varied.items()),
            f"{row.ssim_mean:.4f} ± {row.ssim_std:.4f}",
            f"{row.entropy_delta_mean:+.3f} ± {row.entropy_delta_std:.3f}",
            f"{row.ms_per_image:.1f}",
            marks,
        )
    console.print(table)
    for params, reason in grid.skipped:
        console.print(f"[yellow]invalid setting skipped[/] {params}: {reason}")
    _print_best({"ssim": best_ssim.spec, "entropy": best_entropy.spec}, save, by, variants_file)


def _print_best(best: dict[str, str], save: str | None, by: str, variants_file: Path) -> None:
    """Each criterion's best as a ``--variant`` argument; with ``save``, the ``by`` one written to the file."""
    from pixelperfect.producer.saved_variants import VariantsFileError, save_variant, suggested_name

    labels = {"ssim": "best SSIM to original", "entropy": "most entropy added"}
    for criterion, spec in best.items():
        console.print(f"{labels[criterion]}: --variant '{suggested_name(spec)}={spec}'", highlight=False)
    if save is None:
        return
    try:
        replaced = save_variant(variants_file, save, best[by])
    except VariantsFileError as exc:
        fail(str(exc))
    verb = "replaced" if replaced else "saved"
    console.print(f"{verb} {save} = {best[by]} ({labels[by]}) in {variants_file}; use: submit --variant {save}")


def preview(
    image_url: str = typer.Argument(..., help="path, file:// or s3:// URL of one image"),
    variant: list[str] = typer.Option(..., "--variant", help="variant name or spec; repeat"),
    out: Path = typer.Option(..., "--out", help="PNG file to write"),
    max_side: int = typer.Option(512, help="long side of each panel"),
    columns: int = typer.Option(0, help="panels per row (0: one row)"),
    frame: int = typer.Option(None, help="frame of a multi-frame image"),
    window_index: int = typer.Option(0, help="which DICOM window / VOI LUT"),
) -> None:
    """Write the decoded original and one labelled panel per variant, side by side, to a PNG."""
    from pixelperfect.pipeline.decode.reader import ImageDecodeError, decode_image
    from pixelperfect.pipeline.preprocess.preview import encode_png, render_preview
    from pixelperfect.pipeline.preprocess.variants import parse_variant
    from pixelperfect.storage import read_url

    try:
        variants = [parse_variant(text) for text in variant]
    except ValueError as exc:
        fail(str(exc))
    try:
        data = read_url(image_url)
    except (OSError, KeyError, ValueError) as exc:
        fail(f"cannot read {image_url}: {exc}")
    key = image_url.rstrip("/").rsplit("/", 1)[-1]
    try:
        decoded = decode_image(data, key, frame=frame, window_index=window_index)
        sheet = render_preview(decoded.pixels, variants, max_side=max_side, columns=columns)
    except ImageDecodeError as exc:
        fail(f"{image_url}: {exc.reason}: {exc.detail}")
    except ValueError as exc:
        fail(str(exc))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(encode_png(sheet))
    height, width = sheet.shape[:2]
    console.print(f"wrote {out} ({width}x{height} px): original + {', '.join(v.name for v in variants)}")
