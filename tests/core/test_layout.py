"""The layout is the architecture: each part of ntt imports only the parts below it (checked on the source, every
import, lazy ones included), and every subpackage says in its docstring what it owns and what it may import."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BASE = ("ntt.config", "ntt.types", "ntt.stages", "ntt.geometry", "ntt.steps", "ntt.timing", "ntt.time_left")
# lowest first: a module may import its own part and the parts before it
LAYERS = [
    ("base", (*BASE, "ntt._moved", "ntt")),
    ("io", ("ntt.io",)),
    ("models", ("ntt.models",)),
    ("bank", ("ntt.bank",)),
    ("cache", ("ntt.cache",)),
    ("predict", ("ntt.predict",)),
    ("grading", ("ntt.grading",)),
    ("cli", ("ntt.cli",)),
    # the FiftyOne SDK, likewise
    ("fo base", ("ntt.fo.references", "ntt.fo.checks", "ntt.fo.store", "ntt.fo.outages", "ntt.fo.embeddings")),
    ("fo banks", ("ntt.fo.banks",)),
    ("fo review", ("ntt.fo.review",)),
    ("fo labelling", ("ntt.fo.labelling",)),
    ("fo jobs", ("ntt.fo.jobs",)),
    ("fo", ("ntt.fo", "ntt.fo.forms", "ntt.fo.steps", "ntt.fo.zoo")),  # the facade, and the zoo's entry point
]
SUBPACKAGES = [
    "ntt.io",
    "ntt.models",
    "ntt.bank",
    "ntt.cache",
    "ntt.predict",
    "ntt.grading",
    "ntt.cli",
    "ntt.fo",
    "ntt.fo.review",
    "ntt.fo.labelling",
    "ntt.fo.jobs",
]
# the one way up: the CLI's commands on FiftyOne datasets (`ntt jobs`, `ntt worker`) import the SDK when they run
ALLOWED_LAZY = {("cli", "fo jobs")}


def _layer(module: str) -> int:
    matches = [
        (len(prefix), index)
        for index, (_, prefixes) in enumerate(LAYERS)
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    return max(matches)[1]


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports(path: Path):
    """(imported ntt module, line, whether inside a function) for every import of ``path``."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    tree = ast.parse(path.read_text())
    lazy_lines = {
        n.lineno
        for f in ast.walk(tree)
        if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
        for n in ast.walk(f)
        if isinstance(n, (ast.Import, ast.ImportFrom))
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            names = [f"{stem}.{a.name}" if _is_module(f"{stem}.{a.name}") else stem for a in node.names]
        else:
            continue
        for name in names:
            if name == "ntt" or name.startswith("ntt."):
                yield name, node.lineno, node.lineno in lazy_lines


def test_each_part_imports_only_the_parts_below_it():
    wrong = []
    for path in sorted((ROOT / "ntt").rglob("*.py")):
        source = _module(path)
        for target, line, lazy in _imports(path):
            up = _layer(target) > _layer(source)
            names = LAYERS[_layer(source)][0], LAYERS[_layer(target)][0]
            if up and not (lazy and names in ALLOWED_LAZY):
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {source} ({names[0]}) imports {target} ({names[1]})")
    assert not wrong, "\n".join(wrong)


def test_the_core_never_imports_fiftyone():
    wrong = []
    for path in sorted((ROOT / "ntt").rglob("*.py")):
        if _module(path).startswith("ntt.fo"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                wrong += [
                    f"{path.relative_to(ROOT)}:{node.lineno}: {n}" for n in names if n.split(".")[0] == "fiftyone"
                ]
    assert not wrong, wrong


def test_every_subpackage_says_what_it_owns_and_what_it_may_import():
    for name in SUBPACKAGES:
        doc = importlib.import_module(name).__doc__ or ""
        assert len(doc.split()) >= 15, f"{name}: its docstring should name its job"
        if name != "ntt.fo":
            assert "May import" in doc, f"{name}: its docstring should say what it may import"


def test_the_previous_module_paths_still_import_as_the_same_modules_with_a_warning():
    import subprocess
    import sys

    from ntt._moved import MOVED

    code = (
        "import importlib, warnings\n"
        "from ntt._moved import MOVED\n"
        "for old, new in MOVED.items():\n"
        "    with warnings.catch_warnings(record=True) as seen:\n"
        "        warnings.simplefilter('always')\n"
        "        module = importlib.import_module(old)\n"
        "    assert module is importlib.import_module(new), old\n"
        "    assert module.__spec__.name == new, old\n"
        "    assert any(new in str(w.message) and w.category is DeprecationWarning for w in seen), old\n"
        "from ntt.bank import MemoryBank, BankError\n"
        "from ntt.cache import CandidateStore\n"
        "from ntt.grading import GradeReport, grade_steps\n"
        "from ntt.cli import main, build_parser\n"
        "from ntt.fo.jobs import Job\n"
        "print(len(MOVED))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == str(len(MOVED))
