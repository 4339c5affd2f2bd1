"""Evidence that the golden comparison survives another instruction set: ``python -m tests.pipeline.isa_check
[--pytest]``.

Runs the golden checkpoint (``golden.write_checkpoint``) on the golden phantoms once per CPU kernel setting, each
in a fresh process (the variables are read when the libraries load): the machine's own, then ATen's AVX2 and
default (scalar) kernels, both with MKL and oneDNN held to AVX2, then the latter with numpy's and OpenCV's SIMD
dispatch off too. Prints the CPU's flags, then per setting
the kernel ATen reports, the SHA-256 of the checkpoint file and of the phantoms (both must not change), and
against the machine's own kernels: how many raw mask logits differ bitwise, by how much, how many mask pixels
and predicted IoUs that moves. ``--pytest`` also runs the golden tests under each setting.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

SETTINGS: dict[str, dict[str, str]] = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "default": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    # and numpy's and OpenCV's own dispatch held to their baselines (phantoms, CLAHE, resizing, scoring)
    "baseline": {
        "ATEN_CPU_CAPABILITY": "default",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "NPY_DISABLE_CPU_FEATURES": "X86_V4 X86_V3 AVX512_ICL AVX512_SPR",
        "OPENCV_CPU_DISABLE": "AVX512-SKX,AVX512-CLX,AVX512-ICL,AVX2,FP16",
    },
}
RANDOM_BOXES = 24  # per image and variant, beside the phantoms' own boxes: more boundaries to flip
_ISA_VARIABLES = {name for env in SETTINGS.values() for name in env}


def dump(out: Path) -> None:
    """In this process's kernels: the raw logits of all three candidates (upscaled to the image) and the predicted
    IoUs for the phantoms' boxes and ``RANDOM_BOXES`` more per image and variant, with the hashes, into ``out``."""
    import csv

    import cv2
    import torch

    from pixelperfect.pipeline.model.sam import SamSegmenter
    from pixelperfect.pipeline.model.weights import load_sam, sha256_hex
    from pixelperfect.pipeline.preprocess.variants import parse_variant
    from pixelperfect.synthetic.phantoms import write_phantoms
    from tests.pipeline.golden import N_IMAGES, write_checkpoint

    result: dict[str, np.ndarray] = {"capability": np.array(torch.backends.cpu.get_cpu_capability())}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        write_phantoms(tmp / "phantoms", 12, seed=3, size=256)
        phantoms = hashlib.sha256()
        for path in sorted((tmp / "phantoms").rglob("*.*")):
            phantoms.update(path.relative_to(tmp).as_posix().encode() + path.read_bytes())
        result["phantoms_sha256"] = np.array(phantoms.hexdigest())
        result["weights_sha256"] = np.array(write_checkpoint(tmp / "sam_tiny.pth"))
        checkpoint = (tmp / "sam_tiny.pth").read_bytes()
        result["checkpoint_sha256"] = np.array(sha256_hex(checkpoint))
        sam = load_sam("sam_tiny", checkpoint)
        segmenter = SamSegmenter(sam, torch.device("cpu"), name="sam_tiny")
        boxes: dict[str, list[list[float]]] = {}
        with open(tmp / "phantoms" / "labels.csv") as handle:
            for row in csv.DictReader(handle):
                if row["Target"] == "1":
                    x, y, w, h = (float(row[k]) for k in ("x", "y", "width", "height"))
                    boxes.setdefault(row["patientId"], []).append([x, y, x + w, y + h])
        rng = np.random.default_rng(0)
        for i in range(N_IMAGES):
            key = f"phantom-{i:05d}"
            image = cv2.imread(str(tmp / "phantoms" / "images" / f"{key}.png"), cv2.IMREAD_UNCHANGED)
            for variant in ("raw", "clahe"):
                embedding = segmenter.encode([parse_variant(variant)(image)])[0]
                corner = rng.uniform(0, 200, (RANDOM_BOXES, 2))
                size = rng.uniform(20, 120, (RANDOM_BOXES, 2))
                drawn = np.concatenate([corner, np.minimum(corner + size, 255)], axis=1)
                prompts = np.concatenate([np.asarray(boxes.get(key, []), np.float64).reshape(-1, 4), drawn])
                with torch.inference_mode():
                    box_t = segmenter.transform.apply_boxes_torch(torch.as_tensor(prompts, dtype=torch.float32),
                                                                  embedding.original_size)  # fmt: skip
                    sparse, dense = sam.prompt_encoder(points=None, boxes=box_t, masks=None)
                    low_res, iou = sam.mask_decoder(
                        image_embeddings=embedding.features[None],
                        image_pe=sam.prompt_encoder.get_dense_pe(),
                        sparse_prompt_embeddings=sparse,
                        dense_prompt_embeddings=dense,
                        multimask_output=True,
                    )
                    flat = low_res.reshape(-1, 1, *low_res.shape[-2:])
                    logits = segmenter._upscale(flat, embedding.input_size, embedding.original_size)[:, 0]
                result[f"{key}/{variant}/logits"] = logits.numpy().reshape(len(prompts), 3, *logits.shape[-2:])
                result[f"{key}/{variant}/iou"] = iou.numpy()
    np.savez_compressed(out, **result)  # type: ignore[arg-type]


def compare(base: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> str:
    """One line: what differs between two dumps."""
    differ = total = flipped = masks = 0
    worst = worst_iou = 0.0
    threshold = 0.0  # Sam.mask_threshold
    for key in base:
        if key.endswith("/logits"):
            a, b = base[key], other[key]
            differ += int(np.count_nonzero(a.view(np.uint32) != b.view(np.uint32)))
            total += a.size
            worst = max(worst, float(np.max(np.abs(a - b)) / np.max(np.abs(a))))
            flips = np.count_nonzero((a > threshold) != (b > threshold), axis=(2, 3))
            flipped, masks = flipped + int(flips.sum()), masks + flips.size
        elif key.endswith("/iou"):
            worst_iou = max(worst_iou, float(np.max(np.abs(base[key] - other[key]))))
    same = all(str(base[k]) == str(other[k]) for k in ("checkpoint_sha256", "weights_sha256", "phantoms_sha256"))
    return (
        f"checkpoint and phantoms {'identical' if same else 'DIFFER'}; logits differing bitwise {differ:,} of "
        f"{total:,} ({differ / total:.1%}), max |diff| {worst:.2e} of the largest logit; mask pixels flipped "
        f"{flipped} over {masks} masks; max |diff| of predicted IoUs {worst_iou:.2e}"
    )


def cpu_flags() -> str:
    """Model name and the SIMD flags of /proc/cpuinfo (Linux)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "")
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), [])
    simd = sorted(f for f in set(flags) if f.startswith(("avx", "fma", "amx", "sse4")))
    return f"{model}: {' '.join(simd)}"


def main(argv: list[str]) -> int:
    if argv[:1] == ["--dump"]:
        dump(Path(argv[1]))
        return 0
    print(f"CPU {cpu_flags()}")
    dumps: dict[str, dict[str, np.ndarray]] = {}
    failed = 0
    with tempfile.TemporaryDirectory() as name:
        for setting, env in SETTINGS.items():
            path = Path(name) / f"{setting}.npz"
            child = {k: v for k, v in os.environ.items() if k not in _ISA_VARIABLES} | env
            subprocess.run([sys.executable, "-m", "tests.pipeline.isa_check", "--dump", str(path)], env=child,
                           check=True)  # fmt: skip
            with np.load(path) as data:
                dumps[setting] = {k: data[k] for k in data.files}
            shown = " ".join(f"{k}={v}" for k, v in env.items()) or "(no variables)"
            print(f"{setting}: {shown}: ATen kernels {dumps[setting]['capability']}, checkpoint sha256 "
                  f"{dumps[setting]['checkpoint_sha256']}, weights {str(dumps[setting]['weights_sha256'])[:16]}…, "
                  f"phantoms {str(dumps[setting]['phantoms_sha256'])[:16]}…")  # fmt: skip
            if setting != "native":
                print(f"  vs native: {compare(dumps['native'], dumps[setting])}")
            if "--pytest" in argv:
                command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/pipeline/test_stages.py", "tests/pipeline/test_golden_compare.py"]  # fmt: skip
                run = subprocess.run(command, env=child, capture_output=True, text=True)
                failed += run.returncode != 0
                print(f"  golden tests: {(run.stdout.strip().splitlines() or ['no output'])[-1]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
