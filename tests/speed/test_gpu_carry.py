"""The GPU run on a lent machine (issue 33): what the GPU path imports is in the machine's image or carried as
wheels, the carried list is checked the way ``bench/gpu-wheels.sh`` checks it, and ``bench/gpu_parts.py`` runs its
parts in order of value within a budget, leaving each part's lines under ``OUT`` as soon as they are printed.

The end-to-end proof in a bare interpreter is ``make gpu-rehearsal`` (``bench/gpu-rehearsal.sh``)."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
sys.path.insert(0, str(BENCH))

import gpu_carry  # noqa: E402

#: The scripts of the GPU parts and the plan: every import in them, inside functions too, runs on the lent machine
#: (``common``'s module-level imports come with it; its functions for the CPU benchmarks' services do not).
GPU_SCRIPTS = ("gpu_bench.py", "gpu_decode.py", "gpu_parts.py", "gpu_carry.py", "gpu_sam2.py", "gpu_sam3.py")
#: What the issue names as never imported by the GPU path (modules of boto3, Celery, highdicom, imagecodecs,
#: dicomweb-client), beside the general rule that everything imported is in the image or carried.
NEVER = ("boto3", "botocore", "celery", "kombu", "highdicom", "imagecodecs", "dicomweb_client")
#: Image packages imported only where installed (inside ``try: … except ImportError``): on the lent machine they
#: are there, in the rehearsal's venv they need not be.
OPTIONAL = {"charset-normalizer": "numpy.f2py.crackfortran"}


def script_imports(path: Path) -> set[str]:
    """Every absolute module a script imports, at module level or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def distributions_of(modules: list[str]) -> dict[str, set[str]]:
    """Normalized distribution -> the top-level modules of ``modules`` it provides (stdlib and bench-local
    modules map to none)."""
    owners = importlib.metadata.packages_distributions()
    out: dict[str, set[str]] = {}
    for top in {m.split(".")[0] for m in modules}:
        for dist in owners.get(top, []):
            out.setdefault(gpu_carry.normalize(dist), set()).add(top)
    return out


def rehearsal_closure() -> set[str]:
    """The distributions the rehearsal's venv holds: pip (every venv has it), ``bench/gpu-rehearsal.txt`` and,
    transitively, what each declares for this Python (read from this environment's metadata)."""
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    todo = ["pip"] + [line.split("==")[0] for line in (BENCH / "gpu-rehearsal.txt").read_text().splitlines()
                      if line.strip() and not line.startswith("#")]  # fmt: skip
    seen: set[str] = set()
    while todo:
        name = gpu_carry.normalize(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.distribution(name).requires or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo += [req.name for req in gpu_carry.needed(requires, python)]
    return seen


def check_modules(modules: list[str]) -> None:
    image, carried = gpu_carry.image_packages(), set(gpu_carry.carried())
    used = distributions_of(modules)
    foreign = {d: sorted(m) for d, m in used.items() if d not in image | carried | {"pixelperfect"}}
    assert not foreign, f"the GPU path imports packages neither in the image nor carried: {foreign}"
    assert not [m for m in modules if m.split(".")[0] in NEVER], sorted(m for m in modules if m.split(".")[0] in NEVER)
    # the rehearsal's stand-in for the image must hold every image package the path uses, or it proves nothing
    covered = rehearsal_closure() | set(OPTIONAL)
    uncovered = sorted(d for d in used if d in image and d not in carried and d not in covered)
    assert not uncovered, f"add these to bench/gpu-rehearsal.txt: {uncovered}"


@pytest.mark.slow
def test_what_the_gpu_scripts_import_is_in_the_image_or_carried() -> None:
    wanted = set().union(*(script_imports(BENCH / s) for s in GPU_SCRIPTS))
    wanted |= {"pixelperfect.embedded", "pixelperfect.worker.batch"}  # the path gpu_bench.py runs
    code = textwrap.dedent(f"""
        import importlib, json, sys
        sys.path.insert(0, {str(BENCH)!r})
        for name in {sorted(wanted)!r}:
            importlib.import_module(name)
        print(json.dumps(sorted(sys.modules)))
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    modules = json.loads(done.stdout.strip().splitlines()[-1])
    assert "segment_anything" in modules and "sqlalchemy" in modules  # the check saw the real path
    check_modules(modules)


def test_carried_list_parses_and_carries_only_what_the_image_lacks() -> None:
    rows = gpu_carry.read_list()
    names = [name for _, name, _ in rows]
    assert len(names) == len(set(names)), "one version of each"
    image = gpu_carry.image_packages()
    assert {"torch", "numpy", "opencv-python-headless", "pillow", "scipy"} <= image
    # the exceptions, carried although the image has them: typing-extensions (the image's version was never read and
    # pydantic needs a recent one) and, for the SAM 2 / SAM 3 parts, transformers (the image's 5.17.0 is older than
    # MIN_TRANSFORMERS) with the newer hub, tokenizers and safetensors it declares
    sam_stack = ["transformers", "huggingface-hub", "tokenizers", "safetensors"]
    assert sorted(n for n in names if n in image) == sorted(["typing-extensions", *sam_stack])
    assert set(sam_stack) <= set(gpu_carry.carried(["sam2"])) and set(sam_stack) <= set(gpu_carry.carried(["sam3"]))
    assert not set(sam_stack) & set(gpu_carry.carried(["p6", "decode"]))
    assert {"segment-anything", "sqlalchemy", "pydantic-settings"} <= set(gpu_carry.carried(["p6"]))
    assert "pydicom" not in gpu_carry.carried(["p6"]) and "pydicom" in gpu_carry.carried(["decode"])
    lines = (BENCH / "gpu-rehearsal.txt").read_text().splitlines()
    rehearsal = {gpu_carry.normalize(line.split("==")[0]) for line in lines if line.strip() and line[0] != "#"}
    assert rehearsal <= image, rehearsal - image


def test_parts_are_ordered_by_value_and_unknown_ones_refused() -> None:
    assert gpu_carry.parse_parts("decode, p6") == ["p6", "decode"]
    assert gpu_carry.parse_parts("") == ["p6", "sam2", "sam3", "decode"]
    with pytest.raises(ValueError, match="sam4"):
        gpu_carry.parse_parts("p6,sam4")


def fake_wheel(folder: Path, name: str, version: str, *requires: str) -> None:
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    meta += "".join(f"Requires-Dist: {r}\n" for r in requires) + "\nA description: Requires-Dist: not-a-header\n"
    with zipfile.ZipFile(folder / f"{name.replace('-', '_')}-{version}-py3-none-any.whl", "w") as archive:
        archive.writestr(f"{name.replace('-', '_')}-{version}.dist-info/METADATA", meta)


def test_check_wheels_finds_a_missing_dependency_a_wrong_version_and_an_unlisted_wheel(tmp_path: Path) -> None:
    listing, image = tmp_path / "list.txt", tmp_path / "image.txt"
    listing.write_text("all Alpha_Pkg==1.0\nall beta==2.0\ndecode gamma==3.0\n")
    image.write_text("# the image\nnumpy\n")
    wheels = tmp_path / "w"
    wheels.mkdir()
    fake_wheel(wheels, "alpha-pkg", "1.0", "beta>=2", "numpy", "tomli; python_version < '3.11'",
               "extra-thing; extra == 'fast'")  # fmt: skip
    fake_wheel(wheels, "beta", "2.0")
    assert gpu_carry.check_wheels(wheels, "3.12", ["p6"], listing=listing, image_list=image) == []
    # tomli is needed below 3.11 only, and neither carried nor in the image
    assert gpu_carry.check_wheels(wheels, "3.10", ["p6"], listing=listing, image_list=image) == [
        'alpha-pkg needs tomli; python_version < "3.11": neither carried nor in the image (add it to gpu-wheels.txt)'
    ]
    problems = gpu_carry.check_wheels(wheels, "3.12", None, listing=listing, image_list=image)
    assert problems == [f"gamma==3.0 is listed but no wheel of it is in {wheels}"]
    fake_wheel(wheels, "delta", "1.0")
    fake_wheel(wheels, "beta", "1.0")
    problems = gpu_carry.check_wheels(wheels, "3.12", ["p6"], listing=listing, image_list=image)
    assert "two versions of beta (1.0, 2.0): pip --target keeps either" in problems
    assert f"delta 1.0 is in {wheels} but not listed" in problems


PART = """
import argparse, sys, time
{constants}
parser = argparse.ArgumentParser()
parser.add_argument("--budget", type=float)
parser.add_argument("--smoke", action="store_true")
args, _ = parser.parse_known_args()  # p6 is given --compile
print("{line} budget=%.0f" % args.budget, flush=True)
time.sleep({sleep})
print("{line} finished", flush=True)
"""


def write_part(folder: Path, script: str, line: str, sleep: float, **constants: object) -> None:
    body = "\n".join(f"{k} = {v!r}" for k, v in constants.items())
    (folder / script).write_text(PART.format(constants=body, line=line, sleep=sleep))


def test_the_plan_runs_parts_by_value_within_its_budget_and_keeps_partial_lines(tmp_path: Path) -> None:
    bench, out = tmp_path / "bench", tmp_path / "out"
    bench.mkdir()
    # p6 prints, then outlives its share (3 s + a quarter as grace): stopped, its first line kept
    write_part(bench, "gpu_bench.py", "P6 fake value=1 images/s", 60, ESTIMATE_S=3, MIN_S=1, TESTS=())
    write_part(bench, "gpu_sam2.py", "P-sam2 fake value=2 images/s", 0, ESTIMATE_S=5, MIN_S=1)
    # no gpu_sam3.py: not available in this tree; decode needs more than the budget: skipped, the plan goes on
    write_part(bench, "gpu_decode.py", "P11g fake", 0, ESTIMATE_S=900, MIN_S=600)
    cmd = [sys.executable, str(BENCH / "gpu_parts.py"), "--budget", "40", "--parts", "decode,sam3,sam2,p6",
           "--out", str(out), "--bench-dir", str(bench)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})  # fmt: skip
    # the part's first line is under OUT while the part still runs (a cut-off call returns it)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and "P6 fake" not in _read(out / "p6.txt"):
        time.sleep(0.1)
    assert "P6 fake value=1 images/s budget=3" in _read(out / "p6.txt")
    assert proc.poll() is None and "finished" not in _read(out / "p6.txt")
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, stdout  # a part stopped at its limit
    log = _read(out / "gpu.txt")
    expected = ("# p6: stopped at its limit", "P-sam2 fake value=2", "# sam2: done in",
                "# sam3: not available in this tree", "# decode: skipped: needs 600 s")  # fmt: skip
    order = [log.index(s) for s in expected]
    assert order == sorted(order), log
    assert "P6 fake finished" not in log and "P11g fake" not in log
    assert _read(out / "sam2.txt").count("P-sam2 fake") == 2 and "P-sam2" not in _read(out / "p6.txt")
    assert "# plan took" in log
    assert stdout.count("P6 fake value=1") == 1  # stdout carries the same lines


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""
