"""The package's shape: no import circles between modules nor between packages, one name per module, one place
that chooses a store, and the light commands stay light.

The layer contracts themselves are import-linter's (``[tool.importlinter]`` in pyproject.toml, run by ``make lint``);
this checks what a layers contract cannot: circles inside one package, and circles between packages that a contract
would call peers.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import grimp
import pytest

from tests.conftest import embedded_settings

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pixelperfect"
#: Deprecated import paths kept for users (docs/archives.md): a module that only re-exports its successor, with a
#: DeprecationWarning. The one kind of module allowed to share its name with another.
DEPRECATED_ALIASES = {"pixelperfect.dicomweb": "pixelperfect.storage.dicomweb"}


def module_graph(package: str) -> dict[str, list[str]]:
    """Module -> the modules of ``package`` it imports (function-level imports included)."""
    graph = grimp.build_graph(package)
    return {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}


def package_graph(package: str) -> dict[str, list[str]]:
    """The import graph with packages as nodes: every module stands for its package, except a module that stands
    beside sub-packages (``config.py`` beside ``db/``, ``pipeline/stages.py`` beside ``pipeline/decode/``), which
    is a node of its own, as a package of one module. Imports inside one node are dropped."""
    modules = module_graph(package)
    parents = {m.rpartition(".")[0] for m in modules}
    packages = {m for m in modules if m in parents or m == package}

    def node(module: str) -> str:
        if module in packages:
            return module
        parent = module.rpartition(".")[0]
        has_subpackages = any(p.rpartition(".")[0] == parent for p in packages if p != parent)
        return module if has_subpackages else parent

    edges: dict[str, set[str]] = {}
    for module, imported in modules.items():
        for other in imported:
            a, b = node(module), node(other)
            if a != b:
                edges.setdefault(a, set()).add(b)
            edges.setdefault(b, set())
    return {a: sorted(b) for a, b in edges.items()}


def import_cycles(package: str, *, packages: bool = False) -> list[list[str]]:
    """Strongly connected groups of more than one node in the import graph of ``package`` — modules, or with
    ``packages`` the nodes of :func:`package_graph` — each sorted; Tarjan's algorithm, iterative."""
    edges = package_graph(package) if packages else module_graph(package)
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


def test_the_package_cycle_finder_finds_a_loop_of_packages_without_a_loop_of_modules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The loop this check was written for: training reads the producer's sources, the producer imports the
    worker's tasks, the worker's train task imports training — no module imports itself around a circle."""
    root = tmp_path / "house"
    files = {
        "__init__.py": "",
        "config.py": "",
        "training/__init__.py": "",
        "training/data.py": "from house.producer import sources\n",
        "producer/__init__.py": "",
        "producer/sources.py": "import house.config\n",
        "producer/enqueue.py": "def publish():\n    from house.worker import tasks\n",
        "worker/__init__.py": "",
        "worker/tasks.py": "def train():\n    from house.training import finetune\n",
        "training/finetune.py": "import house.config\n",
        "pipeline/__init__.py": "",
        "pipeline/stages.py": "from house.pipeline.decode import reader\n",  # beside a sub-package: its own node
        "pipeline/options.py": "",
        "pipeline/decode/__init__.py": "",
        "pipeline/decode/reader.py": "from house.pipeline import options\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_cycles("house") == []
    assert import_cycles("house", packages=True) == [["house.producer", "house.training", "house.worker"]]
    graph = package_graph("house")
    assert graph["house.pipeline.stages"] == ["house.pipeline.decode"]
    assert graph["house.pipeline.decode"] == ["house.pipeline.options"]


def test_no_import_cycles_between_pixelperfect_packages() -> None:
    assert import_cycles("pixelperfect", packages=True) == []


def _module_names() -> list[str]:
    return sorted(
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for path in PACKAGE.rglob("*.py")
    )


def test_no_two_modules_or_packages_share_a_name() -> None:
    """``metrics``, ``models``, ``config``, ``control``, ``dicomweb`` and ``report`` each existed twice: a reader
    could not tell from an import which one was meant. Leaf names of modules and packages are unique, apart from
    the deprecated aliases (which only re-export their successor)."""
    names = [m for m in _module_names() if m not in DEPRECATED_ALIASES and "migrations" not in m.split(".")]
    counts = Counter(m.rpartition(".")[2] for m in names)
    shared = {leaf: [m for m in names if m.rpartition(".")[2] == leaf] for leaf, n in counts.items() if n > 1}
    assert shared == {}


def test_deprecated_aliases_warn_and_only_re_export(tmp_path: Path) -> None:
    for alias, successor in DEPRECATED_ALIASES.items():
        source = (ROOT / (alias.replace(".", "/") + ".py")).read_text()
        assert re.findall(r"^(?:from|import) pixelperfect[\w.]*", source, flags=re.M) == [f"from {successor}"]
        assert not re.search(r"^(?:def|class) ", source, flags=re.M), f"{alias} defines code of its own"
        check = (
            "import warnings, importlib\n"
            "with warnings.catch_warnings(record=True) as seen:\n"
            "    warnings.simplefilter('always')\n"
            f"    alias = importlib.import_module({alias!r})\n"
            f"successor = importlib.import_module({successor!r})\n"
            "assert any(w.category is DeprecationWarning for w in seen), seen\n"
            "assert all(getattr(alias, n) is getattr(successor, n) for n in alias.__all__)\n"
        )
        out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr


#: Store classes: only :func:`pixelperfect.storage.open_store` chooses among them by URL.
STORE_CLASSES = ("LocalStore", "S3Store", "DicomwebStore", "DimseStore")


def test_only_the_storage_package_chooses_a_store() -> None:
    """Every store is opened by URL through ``open_store``: no module outside ``pixelperfect/storage/`` builds a
    store class itself or asks whether a URL is DICOMweb to decide how to open it."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent.name == "storage":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\b(" + "|".join(STORE_CLASSES) + r")\(", line):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == []


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
