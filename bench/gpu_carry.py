"""What a lent GPU machine must be given to run the GPU benchmark (issue 33), and the checks on it.

The lent machines run their own image (``bench/device-image-packages.txt``: Python 3.12, torch with CUDA, numpy,
OpenCV, …) with no network; whatever the GPU path imports beyond it travels as wheels (``bench/gpu-wheels.txt``,
downloaded by ``bench/gpu-wheels.sh`` into ``bench/wheels/``) and ``bench/gpu.sh`` installs them with
``pip install --no-index --no-deps --target``. ``--no-deps`` checks nothing, so the checks are here:

* ``check-wheels DIR --python 3.12``: the folder holds exactly the listed wheels, one version each, and every
  dependency they declare for that Python is carried too (at a version that satisfies it) or is in the image;
* ``missing``: which carried distributions this interpreter cannot find (``gpu.sh`` installs the wheels if any);
* ``preflight``: the declared dependencies of what is installed and carried, against the versions present (the
  image's own versions were never all read: a conflict is named before the loan is spent on an ImportError);
* ``sizes DIR``: the carried set's size with the working tree a ``device`` call also carries (64 MiB in all).

Standard library only, plus ``packaging`` (in the image; pip's own copy elsewhere): it runs here, in the
rehearsal's bare venv and on the lent machine.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Collection, Iterable
from pathlib import Path

try:
    from packaging.markers import Marker
    from packaging.requirements import Requirement
except ImportError:  # pragma: no cover - a venv with pip only (the rehearsal's before the wheels)
    from pip._vendor.packaging.markers import Marker  # type: ignore[no-redef]
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WHEELS_LIST = HERE / "gpu-wheels.txt"
IMAGE_LIST = HERE / "device-image-packages.txt"
#: What one ``device`` call may carry (working tree and carried paths together), and this script's own bound: it
#: refuses a carried set that leaves less than this much of it for the tree to grow (results come back apart).
CALL_LIMIT_MIB = 64.0
REFUSE_ABOVE_MIB = 56.0
#: Parts of bench/gpu_parts.py, in order of value (kept here too so that this file imports nothing of bench/).
PARTS = ("p6", "sam2", "sam3", "decode")


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them: ``Typing_Extensions`` -> ``typing-extensions``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_parts(text: str | None) -> list[str]:
    """``"decode, p6"`` -> ``["p6", "decode"]`` (order of value); empty or None: every part. Unknown names raise."""
    names = [p.strip() for p in (text or "").split(",") if p.strip()]
    unknown = [p for p in names if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown GPU part(s) {', '.join(unknown)}; the parts are {', '.join(PARTS)}")
    return [p for p in PARTS if p in names] if names else list(PARTS)


def read_list(path: Path = WHEELS_LIST) -> list[tuple[str, str, str]]:
    """``(part, normalized name, version)`` per line of the carried list."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        parts = fields[0].split(",") if fields else []
        if len(fields) != 2 or "==" not in fields[1] or not all(p == "all" or p in PARTS for p in parts):
            raise ValueError(f"{path.name}:{number}: expected 'PART[,PART] NAME==VERSION', PART 'all' or one of "
                             f"{PARTS}")  # fmt: skip
        name, version = fields[1].split("==", 1)
        rows.append((fields[0], normalize(name), version))
    return rows


def carried(parts: Collection[str] | None = None, path: Path = WHEELS_LIST) -> dict[str, str]:
    """Normalized name -> pinned version of what the given parts need carried (``None``: every part)."""
    return {
        name: version
        for part, name, version in read_list(path)
        if parts is None or any(p in ("all", *parts) for p in part.split(","))
    }


def image_packages(path: Path = IMAGE_LIST) -> set[str]:
    """The normalized names of the packages the lent machines' image has."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return {normalize(line) for line in lines if line}


def wheel_metadata(wheel: Path) -> tuple[str, str, list[str]]:
    """``(normalized name, version, Requires-Dist lines)`` read from a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as archive:
        meta = next(n for n in archive.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA"))
        text = archive.read(meta).decode("utf-8", "replace")
    head = text.split("\n\n", 1)[0]  # the headers; the description follows the first blank line
    fields: dict[str, list[str]] = {}
    for line in head.splitlines():
        key, _, value = line.partition(": ")
        fields.setdefault(key, []).append(value.strip())
    return normalize(fields["Name"][0]), fields["Version"][0], fields.get("Requires-Dist", [])


def _environment(python_version: str) -> dict[str, str]:
    """Marker variables of CPython ``python_version`` on Linux x86-64 (the lent machine), no extra asked for."""
    return {
        "python_version": python_version,
        "python_full_version": f"{python_version}.0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "extra": "",
    }


def needed(requires: Iterable[str], python_version: str) -> list[Requirement]:
    """The requirements among ``requires`` that hold for that Python without any extra."""
    env = _environment(python_version)
    out = []
    for text in requires:
        req = Requirement(text)
        if req.marker is None or Marker(str(req.marker)).evaluate(env):
            out.append(req)
    return out


def check_wheels(folder: Path, python_version: str, parts: Collection[str] | None = None, *,
                 listing: Path = WHEELS_LIST, image_list: Path = IMAGE_LIST) -> list[str]:  # fmt: skip
    """Problems with a folder of carried wheels for ``parts`` (``None``: every part); empty when it is right."""
    wanted, image = carried(parts, listing), image_packages(image_list)
    problems, found = [], {}
    for wheel in sorted(folder.glob("*.whl")):
        name, version, requires = wheel_metadata(wheel)
        if name in found:
            problems.append(f"two versions of {name} ({found[name][0]}, {version}): pip --target keeps either")
        found[name] = (version, requires)
    for name, version in wanted.items():
        if name not in found:
            problems.append(f"{name}=={version} is listed but no wheel of it is in {folder}")
        elif found[name][0] != version:
            problems.append(f"{name}: {found[name][0]} in {folder}, {version} listed")
    problems += [f"{name} {found[name][0]} is in {folder} but not listed" for name in found if name not in wanted]
    for name, (_, requires) in sorted(found.items()):
        for req in needed(requires, python_version):
            dep = normalize(req.name)
            if dep in found:
                if not req.specifier.contains(found[dep][0], prereleases=True):
                    problems.append(f"{name} needs {req}, {dep} {found[dep][0]} is carried")
            elif dep not in image:
                problems.append(f"{name} needs {req}: neither carried nor in the image (add it to {WHEELS_LIST.name})")
    return problems


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing(parts: Collection[str] | None = None) -> list[str]:
    """The carried distributions for ``parts`` this interpreter cannot find."""
    return [name for name in carried(parts) if installed_version(name) is None]


def preflight(parts: Collection[str] | None = None) -> list[str]:
    """Each declared dependency of the carried distributions present that this interpreter does not satisfy."""
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    problems = []
    for name in carried(parts):
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # missing() says so
        for req in needed(dist.requires or [], python):
            version = installed_version(req.name)
            if version is None:
                problems.append(f"{name} needs {req}: not installed")
            elif not req.specifier.contains(version, prereleases=True):
                problems.append(f"{name} needs {req}: {version} is installed")
    return problems


def tree_bytes(root: Path = ROOT) -> int | None:
    """What a ``device`` call sends of the working tree: tracked files and untracked ones git does not ignore."""
    try:
        listing = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root,
                                 capture_output=True, check=True).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    paths = (root / p for p in listing.decode().split("\0") if p)
    return sum(p.stat().st_size for p in paths if p.is_file() and not p.is_symlink())


def sizes(folder: Path) -> tuple[list[str], float]:
    """Lines describing the carried set and the tree, and the two together in MiB."""
    wheels = sorted(folder.glob("*.whl"))
    lines = [f"{w.stat().st_size / 2**20:7.2f} MiB  {w.name}" for w in wheels]
    carried_mib = sum(w.stat().st_size for w in wheels) / 2**20
    tree = tree_bytes()
    tree_mib = (tree or 0) / 2**20
    lines.append(f"carried set: {len(wheels)} wheels, {carried_mib:.1f} MiB ({folder})")
    lines.append(f"working tree: {tree_mib:.1f} MiB" if tree is not None else "working tree: unknown (no git)")
    total = carried_mib + tree_mib
    lines.append(f"together: {total:.1f} MiB of the {CALL_LIMIT_MIB:.0f} MiB one device call may carry")
    return lines, total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    req = sub.add_parser("requirements", help="print NAME==VERSION of the carried set, one per line")
    chk = sub.add_parser("check-wheels", help="check a folder of carried wheels")
    chk.add_argument("folder", type=Path)
    chk.add_argument("--python", default="3.12", help="the Python version the wheels are for")
    sub.add_parser("missing", help="carried distributions this interpreter lacks (exit 1 if any)")
    sub.add_parser("preflight", help="unmet dependencies of the carried distributions (exit 1 if any)")
    siz = sub.add_parser("sizes", help="the carried set's and the working tree's size (exit 1 above the bound)")
    siz.add_argument("folder", type=Path)
    for p in (req, chk, sub.choices["missing"], sub.choices["preflight"]):
        p.add_argument("--parts", default=None, help="comma-separated parts (default: PP_GPU_PARTS, else all)")
    args = parser.parse_args(argv)
    parts = parse_parts(args.parts if getattr(args, "parts", None) is not None else os.environ.get("PP_GPU_PARTS"))
    if args.command == "requirements":
        print("\n".join(f"{name}=={version}" for name, version in carried(parts).items()))
        return 0
    if args.command == "check-wheels":
        problems = check_wheels(args.folder, args.python, parts)
    elif args.command == "missing":
        problems = missing(parts)
    elif args.command == "preflight":
        problems = preflight(parts)
    else:
        lines, total = sizes(args.folder)
        print("\n".join(lines))
        if total > REFUSE_ABOVE_MIB:
            print(f"too large: keep the carried set and the tree under {REFUSE_ABOVE_MIB:.0f} MiB (carry fewer "
                  "parts: PP_GPU_PARTS=...)", file=sys.stderr)  # fmt: skip
            return 1
        return 0
    print("\n".join(problems))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
