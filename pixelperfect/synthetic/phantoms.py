"""Synthetic chest radiographs with exactly known opacity masks and RSNA-style boxes.

A phantom is a PA chest film drawn from a few dozen random anatomical parameters: body outline and soft
tissue, two lung fields with vascular texture, heart and mediastinum, spine, diaphragm domes with a gastric
bubble, clavicles, humeral heads, posterior and anterior ribs, and quantum noise. Zero to two soft-edged
opacities of graded contrast (barely visible to dense) sit in the mid and lower zones of one or both lungs,
sized like the RSNA Pneumonia Detection Challenge boxes (at 1024²: width 40–530 px, height 45–940 px; both
scale with ``size``).

The smooth anatomy is drawn at half resolution and upsampled (radiographs are blurry at that scale); opacities
and noise are drawn at full resolution, so the ground-truth mask is exact: it is the set of pixels where an
opacity's soft profile, clipped to the lung field, reaches half its peak (:data:`MASK_LEVEL`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

MAX_VALUE = 4095  # 12-bit
MASK_LEVEL = 0.5  # an opacity's mask: profile x lung field >= this (half of its peak density)
REFERENCE_SIZE = 1024
BOX_WIDTH_RANGE = (40, 530)  # RSNA box extremes at 1024^2, in pixels
BOX_HEIGHT_RANGE = (45, 940)
PIXEL_SPACING_MM = 0.168  # at 1024^2; RSNA's downsampled films are 0.139-0.171 mm
_TWO_BOX_FRACTION = 0.55  # RSNA: 9,555 boxes over 6,012 positive images -> ~1.6 boxes per positive image
_CR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage
_DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


@dataclass
class Phantom:
    """One synthetic radiograph.

    ``image``: ``(H, W) uint16``, 12-bit values 0..4095, bright = dense (bone, opacity).
    ``mask``: ``(H, W) bool``, the union of the opacities (exact ground truth).
    ``boxes``: one XYXY box ``(x1, y1, x2, y2)`` per opacity, pixel coordinates, ``x2``/``y2`` exclusive,
    tight around that opacity's own mask region. Empty for a negative image.
    """

    id: str
    image: np.ndarray
    mask: np.ndarray
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)


def phantom_id(index: int) -> str:
    return f"phantom-{index:05d}"


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 + 0.5 * np.tanh(0.5 * x)


def _band(dist: np.ndarray, half_width: float) -> np.ndarray:
    """Bone cross-section: flat-topped with a brighter cortical rim, ~0 beyond ``half_width``."""
    q = (dist / half_width) ** 2
    return np.exp(-(q**2)) * (0.65 + 0.35 * np.minimum(q, 1.0))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random field."""
    noise: np.ndarray = rng.standard_normal(shape, dtype=np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), sigma)
    return noise / max(float(noise.std()), 1e-6)


@dataclass
class _Anatomy:
    density: np.ndarray  # (r, r) float32, ~0 air .. ~1 bone over soft tissue
    lungs: np.ndarray  # (r, r) float32 in 0..1, soft lung-field indicator
    cx: float  # midline, normalised
    top: float  # lung apex, normalised
    domes: tuple[float, float]  # (image-left, image-right) dome peak height, normalised


def _draw_anatomy(rng: np.random.Generator, r: int) -> _Anatomy:
    """Smooth anatomy on an ``r x r`` grid of normalised coordinates (u right, v down, both 0..1)."""
    coords = (np.arange(r, dtype=np.float32) + 0.5) / r
    u, v = coords[None, :], coords[:, None]
    edge = 1.5 / r  # soft-edge scale: ~1.5 work pixels
    cx = 0.5 + float(rng.normal(0, 0.012))
    width = float(rng.uniform(0.9, 1.04))  # thorax width factor
    top = float(rng.uniform(0.11, 0.16))
    dome_r = float(rng.uniform(0.64, 0.72))  # patient's right = image left, the higher dome
    dome_l = dome_r + float(rng.uniform(0.015, 0.045))
    t = np.abs(u - cx)  # distance from the midline

    # body: a squarish super-ellipse, soft tissue thickest in the middle (projected chord length)
    d2 = (np.abs(u - cx) / (0.47 * width)) ** 2.8 + (np.abs(v - 0.7) / 0.76) ** 2.8
    body = np.sqrt(np.clip(1.0 - d2, 0.0, 1.0)) ** 0.5
    neck = _sigmoid((0.075 - t) / edge) * _sigmoid((0.12 - v) / (4 * edge))
    density = 0.5 * np.maximum(body, 0.9 * neck)
    for side in (-1.0, 1.0):  # shoulders: deltoid soft tissue around the humeral heads
        sx, sy = (u - (cx + side * 0.46 * width)) / 0.11, (v - (top + 0.02)) / 0.13
        density = np.maximum(density, 0.42 * _sigmoid((1.0 - np.sqrt(sx * sx + sy * sy)) / (8 * edge)))

    # lungs: between the mediastinum and the lateral wall, below the apex, above the diaphragm
    lungs: np.ndarray = np.zeros((r, r), np.float32)
    lateral = 0.05 + (0.355 * width - 0.05) * np.clip((v - top) / 0.42, 0.0, 1.0) ** 0.6
    medial = 0.042 + 0.03 * np.clip(v - top, 0.0, 1.0)
    span = np.maximum(lateral - medial, 1e-3)
    frac = np.clip((t - medial) / span, 0.0, 1.0)
    for side, dome in ((-1.0, dome_r), (1.0, dome_l)):
        inside_side = _sigmoid(side * (u - cx) / edge)
        diaphragm = dome + 0.28 * (frac - 0.38) ** 2
        margin = np.minimum(np.minimum(t - medial, lateral - t), np.minimum(diaphragm - v, v - top))
        lungs += inside_side * _sigmoid(margin / (1.2 * edge))
    # heart: an ellipse bulging to the image right (patient's left), carved out of the lungs
    hx, hy = cx + float(rng.uniform(0.04, 0.07)), dome_l - float(rng.uniform(0.07, 0.1))
    ha, hb = float(rng.uniform(0.15, 0.19)), float(rng.uniform(0.12, 0.15))
    heart = _sigmoid((1.0 - np.sqrt(((u - hx) / ha) ** 2 + ((v - hy) / hb) ** 2)) / (3 * edge / ha))
    lungs *= 1.0 - heart
    # lung density: darker than soft tissue, denser towards the bases; vascular texture densest at the hila
    hilum = np.exp(-(((t - 0.1) / 0.09) ** 2 + ((v - 0.44) / 0.1) ** 2))
    vessels = _smooth_noise(rng, (r, r), 2.0 + r / 256) * (0.006 + 0.025 * hilum)
    density -= lungs * (0.36 - 0.1 * np.clip((v - top) / 0.6, 0, 1) - vessels - 0.05 * hilum)

    # mediastinum, heart and spine
    density += 0.04 * _sigmoid((0.06 - t) / (3 * edge)) * _sigmoid((v - 0.05) / edge) + 0.035 * heart
    knob = np.exp(-(((u - cx - 0.055) / 0.035) ** 2 + ((v - top - 0.17) / 0.035) ** 2))  # aortic knob
    density += 0.05 * knob * (1.0 - lungs) + 0.02 * knob
    vertebrae = 0.85 + 0.15 * np.cos(2 * np.pi * (v - top) / 0.042)
    density += 0.05 * _sigmoid((0.03 - t) / (2 * edge)) * vertebrae
    # below the domes: liver under the right one, a gastric air bubble under the left one
    density += 0.04 * _sigmoid((v - dome_r - 0.05) / (4 * edge)) * _sigmoid((cx - u) / (6 * edge))
    bx, by = cx + 0.16, dome_l + 0.07
    density -= 0.08 * np.exp(-(((u - bx) / 0.06) ** 2 + ((v - by) / 0.03) ** 2))

    # bones: ribs (posterior arches, fainter anterior ones), clavicles, humeral heads
    cage = _sigmoid((0.37 * width - t) / (8 * edge)) * _sigmoid((t - 0.04) / (3 * edge))
    step = (max(dome_r, dome_l) - top) / 9.3
    rib_half = 0.24 * step
    ribs = np.zeros((r, r), np.float32)
    tt = t - 0.035
    for i in range(10):
        y_post = top - 0.03 + i * step - 0.1 * tt + 1.25 * tt**2
        ribs += _band(v - y_post, rib_half)
        y_ant = top + 0.05 + i * step * 0.85 + 0.45 * np.maximum(0.36 * width - t, 0.0)
        ribs += 0.45 * _band(v - y_ant, 0.8 * rib_half) * _sigmoid((t - 0.12) / edge)
    below = _sigmoid((v - max(dome_r, dome_l) - 0.03) / (4 * edge))
    density += 0.13 * ribs * cage * (1.0 - 0.6 * heart) * (1.0 - 0.7 * below)
    for side in (-1.0, 1.0):
        # clavicle: from the sternal end up and out to the shoulder, a gentle S curve
        s = np.clip((t - 0.04) / 0.27, 0.0, 1.0)
        y_clav = top + 0.035 - 0.07 * s + 0.03 * np.sin(np.pi * s)
        reach = _sigmoid((0.32 - t) / edge) * _sigmoid((t - 0.035) / edge) * _sigmoid(side * (u - cx) / edge)
        density += 0.22 * _band(v - y_clav, 0.013) * reach
        head = np.sqrt((u - (cx + side * 0.5 * width)) ** 2 + (v - (top + 0.03)) ** 2) / 0.075
        density += 0.12 * np.sqrt(np.clip(1.0 - head * head, 0.0, 1.0))

    # a slight patient rotation
    angle = float(rng.normal(0, 1.5))
    rotation = cv2.getRotationMatrix2D((cx * r, 0.5 * r), angle, 1.0)
    density = cv2.warpAffine(
        density.astype(np.float32), rotation, (r, r), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    lungs = cv2.warpAffine(np.clip(lungs, 0, 1).astype(np.float32), rotation, (r, r), flags=cv2.INTER_LINEAR)
    return _Anatomy(density, lungs, cx, top, (dome_r, dome_l))


def _sample_box_size(rng: np.random.Generator, scale: float) -> tuple[float, float]:
    """An RSNA-like (width, height) in pixels: width ~ N(230, 80), height/width ~ 1.45 (log-normal)."""
    width = float(np.clip(rng.normal(230, 80), *BOX_WIDTH_RANGE))
    height = float(np.clip(width * rng.lognormal(np.log(1.45), 0.28), *BOX_HEIGHT_RANGE))
    return width * scale, height * scale


def _draw_opacity(
    rng: np.random.Generator, lungs: np.ndarray, side: int, anatomy: _Anatomy, scale: float
) -> tuple[np.ndarray, tuple[int, int, int, int]] | None:
    """One opacity's profile (full-size float32, 0..1, clipped to the lungs) and its tight mask box."""
    size = lungs.shape[0]
    columns = np.arange(size)
    for _ in range(12):
        width, height = _sample_box_size(rng, scale)
        dome = anatomy.domes[0 if side < 0 else 1]
        # centre in the mid and lower zones of the chosen lung
        y0 = size * (anatomy.top + (dome - anatomy.top) * rng.uniform(0.5, 0.78))
        row = lungs[int(np.clip(y0, 0, size - 1))]
        in_lung = (row > 0.5) & ((columns < anatomy.cx * size) if side < 0 else (columns >= anatomy.cx * size))
        xs = np.flatnonzero(in_lung)
        if xs.size < BOX_WIDTH_RANGE[0] * scale:
            continue
        lung_w, lung_h = float(xs[-1] - xs[0]), size * (dome - anatomy.top)
        width, height = min(width, 0.9 * lung_w), min(height, 0.75 * lung_h)
        x0 = rng.uniform(xs[0] + 0.35 * width, xs[-1] - 0.35 * width)
        a, b = width / 2 / 0.9, height / 2 / 0.9  # the half-level contour sits near 0.9 of the radius
        x1, x2 = max(int(x0 - a) - 1, 0), min(int(x0 + a) + 2, size)
        y1, y2 = max(int(y0 - b) - 1, 0), min(int(y0 + b) + 2, size)
        yy, xx = np.mgrid[y1:y2, x1:x2].astype(np.float32)
        dx, dy = (xx - x0) / a, (yy - y0) / b
        theta = np.arctan2(dy, dx)
        wobble = np.zeros_like(theta)
        for k in (2, 3, 5):
            wobble += rng.uniform(-0.05, 0.05) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
        rr = np.sqrt(dx * dx + dy * dy) * (1.0 + wobble)
        core = np.clip((1.0 - rr) / 0.2, 0.0, 1.0)
        profile = np.zeros(lungs.shape, np.float32)
        profile[y1:y2, x1:x2] = core * core * (3 - 2 * core) * lungs[y1:y2, x1:x2]
        own = profile >= MASK_LEVEL
        if not own.any():
            continue
        ys, xs_m = np.nonzero(own[y1:y2, x1:x2])
        box = (x1 + int(xs_m.min()), y1 + int(ys.min()), x1 + int(xs_m.max()) + 1, y1 + int(ys.max()) + 1)
        bw, bh = box[2] - box[0], box[3] - box[1]
        if BOX_WIDTH_RANGE[0] * scale <= bw <= BOX_WIDTH_RANGE[1] * scale and (
            BOX_HEIGHT_RANGE[0] * scale <= bh <= BOX_HEIGHT_RANGE[1] * scale
        ):
            return profile, box
    return None


def make_phantom(index: int, *, seed: int = 0, size: int = 1024, positive_fraction: float = 0.75) -> Phantom:
    """Draw phantom number ``index``; deterministic for ``(seed, index, size, positive_fraction)``."""
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index!r}")
    if not 64 <= size <= 8192:
        raise ValueError(f"size must be in 64..8192, got {size!r}")
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction!r}")
    rng = np.random.default_rng([seed, index])
    scale = size / REFERENCE_SIZE
    work = max(size // 2, 64)
    anatomy = _draw_anatomy(rng, work)
    density: np.ndarray = cv2.resize(anatomy.density, (size, size), interpolation=cv2.INTER_LINEAR)
    lungs = cv2.resize(anatomy.lungs, (size, size), interpolation=cv2.INTER_LINEAR)

    positive = rng.random() < positive_fraction
    n_opacities = (2 if rng.random() < _TWO_BOX_FRACTION else 1) if positive else 0
    first = -1 if rng.random() < 0.5 else 1
    sides = [first, -first if rng.random() < 0.65 else first][:n_opacities]
    mask = np.zeros((size, size), bool)
    boxes: list[tuple[int, int, int, int]] = []
    for side in sides:
        drawn = _draw_opacity(rng, lungs, side, anatomy, scale)
        if drawn is None:
            continue
        profile, box = drawn
        # graded contrast: a quarter barely visible, the rest faint to dense (lung vs soft tissue is ~0.3)
        amplitude = float(rng.uniform(0.025, 0.05) if rng.random() < 0.25 else rng.uniform(0.05, 0.3))
        y1, y2, x1, x2 = box[1], box[3], box[0], box[2]
        patchy = 0.8 + 0.2 * np.tanh(_smooth_noise(rng, (y2 - y1, x2 - x1), 12 * scale + 1))
        density[y1:y2, x1:x2] += amplitude * profile[y1:y2, x1:x2] * patchy
        mask |= profile >= MASK_LEVEL
        boxes.append(box)
    if positive and not boxes:  # practically never: fall back to a small dense opacity mid-lung
        drawn = _draw_opacity(np.random.default_rng([seed, index, 1]), lungs, first, anatomy, scale * 0.5)
        if drawn is not None:
            profile, box = drawn
            density += 0.15 * profile
            mask |= profile >= MASK_LEVEL
            boxes.append(box)

    gain, offset = float(rng.uniform(3500, 4200)), float(rng.uniform(120, 320))
    sigma = float(rng.uniform(15, 40))
    noise = rng.standard_normal((size, size), dtype=np.float32)
    values = density * np.float32(gain) + np.float32(offset) + noise * np.float32(sigma)
    image = np.clip(values, 0, MAX_VALUE).astype(np.uint16)
    return Phantom(phantom_id(index), image, mask, boxes)


def display_uint8(image: np.ndarray) -> np.ndarray:
    """``(H, W) uint16`` 12-bit -> ``(H, W) uint8`` display image, 0..4095 scaled to 0..255 (rounded)."""
    return ((image.astype(np.uint32) * 255 + MAX_VALUE // 2) // MAX_VALUE).astype(np.uint8)


def write_phantoms(
    out: Path,
    n: int,
    *,
    seed: int = 0,
    size: int = 1024,
    fmt: Literal["png", "dicom"] = "png",
    positive_fraction: float = 0.75,
) -> list[Phantom]:
    """Write ``n`` phantoms under ``out``: ``images/<id>.png|.dcm``, ``masks/<id>.png`` and ``labels.csv``.

    PNG images are the 8-bit display image. DICOM images are 12-bit (BitsStored 12), MONOCHROME2 for even
    indices and MONOCHROME1 (inverted stored values) for odd ones, modality CR / DX alternately. Masks are
    ``uint8`` 0/255. ``labels.csv`` follows RSNA: ``patientId,x,y,width,height,Target`` with ``x,y`` the
    top-left corner, one row per box, and one row with empty coordinates and ``Target=0`` for a negative
    image.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n!r}")
    if fmt not in ("png", "dicom"):
        raise ValueError(f"fmt must be 'png' or 'dicom', got {fmt!r}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    phantoms: list[Phantom] = []
    with open(out / "labels.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patientId", "x", "y", "width", "height", "Target"])
        for index in range(n):
            phantom = make_phantom(index, seed=seed, size=size, positive_fraction=positive_fraction)
            if fmt == "png":
                cv2.imwrite(str(out / "images" / f"{phantom.id}.png"), display_uint8(phantom.image))
            else:
                write_dicom(out / "images" / f"{phantom.id}.dcm", phantom, index=index, seed=seed)
            cv2.imwrite(str(out / "masks" / f"{phantom.id}.png"), phantom.mask.astype(np.uint8) * 255)
            for x1, y1, x2, y2 in phantom.boxes:
                writer.writerow([phantom.id, x1, y1, x2 - x1, y2 - y1, 1])
            if not phantom.boxes:
                writer.writerow([phantom.id, "", "", "", "", 0])
            phantoms.append(phantom)
    return phantoms


def write_dicom(path: Path, phantom: Phantom, *, index: int, seed: int = 0) -> None:
    """Write ``phantom`` as a 12-bit CR/DX DICOM file (MONOCHROME1 with inverted values for odd ``index``)."""
    phantom_dataset(phantom, index=index, seed=seed).save_as(path, enforce_file_format=True)


def phantom_dataset(phantom: Phantom, *, index: int, seed: int = 0) -> Any:
    """``phantom`` as an explicit VR little endian 12-bit CR/DX ``pydicom.Dataset`` (MONOCHROME1 with inverted
    values for odd ``index``); :mod:`pixelperfect.synthetic.archive_phantoms` re-encodes it in other transfer
    syntaxes."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    monochrome1 = index % 2 == 1
    modality = "DX" if monochrome1 else "CR"
    sop_class = _DX_SOP_CLASS if monochrome1 else _CR_SOP_CLASS
    stored = (MAX_VALUE - phantom.image) if monochrome1 else phantom.image
    height, width = phantom.image.shape
    spacing = PIXEL_SPACING_MM * REFERENCE_SIZE / width

    def uid(kind: str) -> UID:
        return UID(generate_uid(entropy_srcs=[f"pixelperfect-phantom-{seed}-{index}-{kind}"]))

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = uid("sop")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid("study"), uid("series")
    ds.PatientName = "Phantom^Synthetic"
    ds.PatientID = f"PP-{seed}-{phantom.id}"
    ds.PatientSex, ds.PatientAge = "O", "050Y"
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined = modality, "PA", "CHEST"
    ds.ConversionType = "WSD"
    ds.Rows, ds.Columns = height, width
    ds.PixelSpacing = [round(spacing, 6), round(spacing, 6)]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()
    return ds
