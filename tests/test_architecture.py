"""The package's shape: no import circles between modules, and the light commands stay light.

The layer contracts themselves are import-linter's (``[tool.importlinter]`` in pyproject.toml, run by ``make lint``);
this checks what a layers contract cannot: circles inside one package.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

from tests.conftest import embedded_settings


def import_cycles(package: str) -> list[list[str]]:
    """Strongly connected groups of more than one module in the import graph of ``package`` (function-level
    imports included), each sorted; Tarjan's algorithm, iterative."""
    graph = grimp.build_graph(package)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            children = edges.get(node, [])
            if i < len(children):
                work.append((node, i + 1))
                child = children[i]
                if child not in index:
                    work.append((child, 0))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    cycles.append(sorted(group))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return sorted(cycles)


def test_the_cycle_finder_finds_a_planted_cycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "planted"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from planted import b\n")
    (pkg / "b.py").write_text("def f():\n    from planted import c\n")  # function-level imports count
    (pkg / "c.py").write_text("import planted.a\n")
    (pkg / "d.py").write_text("import planted.a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_cycles("planted") == [["planted.a", "planted.b", "planted.c"]]


def test_no_import_cycles_between_pixelperfect_modules() -> None:
    assert import_cycles("pixelperfect") == []


LIGHT = """
import json, sys
from pixelperfect.cli import app
try:
    app(sys.argv[1:], standalone_mode=False)
finally:
    heavy = sorted(m for m in ("torch", "cv2", "segment_anything", "torchvision") if m in sys.modules)
    print("MODULES=" + json.dumps(heavy))
"""


@pytest.fixture(scope="module")
def light_run(tmp_path_factory: pytest.TempPathFactory, phantom_dir: Path) -> dict[str, str]:
    """A finished GrabCut run ``light`` (12 phantoms, boxes and ground truth); the environment that reaches it."""
    from pixelperfect.embedded import SubmitRequest, submit

    settings = embedded_settings(tmp_path_factory.mktemp("light"))
    submit(
        SubmitRequest(
            source=str(phantom_dir / "images"),
            run="light",
            variants=["raw"],
            model="grabcut",
            annotations=str(phantom_dir / "labels.csv"),
            gt_masks=str(phantom_dir / "masks"),
        ),
        settings,
    )
    return {"PIXELPERFECT_DATABASE_URL": settings.database_url, "PIXELPERFECT_STORE_URL": settings.store_url}


@pytest.mark.integration
@pytest.mark.parametrize("command", ["status --json", "report --format json", "report --format csv"])
def test_status_and_report_load_no_torch_and_no_opencv(tmp_path: Path, light_run: dict[str, str], command: str) -> None:
    """``pixelperfect status RUN --json`` and ``report --format json|csv`` run in a fresh interpreter without
    importing torch, torchvision, OpenCV or segment-anything (seconds and ~700 MB saved per call)."""
    name, *options = command.split()
    args = [name, "light", *options] + (["--out", str(tmp_path / "report")] if name == "report" else [])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIXELPERFECT_")} | light_run
    out = subprocess.run([sys.executable, "-c", LIGHT, *args], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    printed, _, modules = out.stdout.rpartition("MODULES=")
    assert json.loads(modules) == [], f"{command} loaded {modules.strip()}"
    if name == "status":
        assert json.loads(printed)["images"]["done"] == 12
    else:
        assert [p.suffix for p in (tmp_path / "report").iterdir()], "no report written"
