"""Book-wide rules, read straight from the notebooks' JSON (nothing is executed, so these run in well under a second):
chapters import only earlier chapters, every chapter stores a figure, the trainer's exported cells stay small,
and no chapter or module points at material a reader does not have."""
import ast
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NBS = REPO / "nbs"
LIB = REPO / "vibenanochat"
PKG = "vibenanochat"


def chapter_key(nb: Path) -> str:
    "A chapter's place in the book: the file name's prefix, '00' < '00a' < '00b' < '01' < ... < '08a' < '09' < '10'."
    return nb.name.split("_", 1)[0]


CHAPTERS = sorted((p for p in NBS.glob("*.ipynb") if not p.name.startswith("_")), key=chapter_key)


def code_cells(nb: Path) -> list[str]:
    "The source of every code cell of a notebook, exported or not."
    cells = json.loads(nb.read_text())["cells"]
    return ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


def default_exp(nb: Path) -> str | None:
    "The module a chapter exports to (its `#| default_exp` directive), or None."
    for src in code_cells(nb):
        m = re.search(r"^#\s*\|\s*default_exp\s+(\S+)", src, re.M)
        if m: return m.group(1)
    return None


def _python(src: str) -> str:
    "A cell's source with IPython-only lines (%magic, !shell) turned into comments, so `ast` can read it."
    return "\n".join("#" + l if l.lstrip().startswith(("%", "!")) else l for l in src.splitlines())


_IMPORT_RE = re.compile(rf"^\s*(?:from\s+{PKG}\.(\w+)[\w.]*\s+import|import\s+{PKG}\.(\w+)|from\s+\.(\w+)[\w.]*\s+import)", re.M)
_FROM_PKG_RE = re.compile(rf"^\s*from\s+(?:{PKG}|\.)\s+import\s+(\([^)]*\)|[^\n#]*)", re.M)


def imported_modules(src: str) -> set[str]:
    "The library modules a cell imports: `import vibenanochat.X`, `from vibenanochat.X import`, `from vibenanochat import X`, `from .X import`."
    try: tree = ast.parse(_python(src))
    except SyntaxError:      # not plain Python: fall back to reading the import lines themselves
        mods = {next(g for g in m.groups() if g) for m in _IMPORT_RE.finditer(src)}
        for m in _FROM_PKG_RE.finditer(src):
            mods |= {n.split(" as ")[0].strip() for n in m.group(1).strip("()").split(",") if n.strip()}
        return mods
    mods = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[1] for a in node.names if a.name.startswith(PKG + ".")}
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module == PKG or node.level == 1 and node.module is None:
                mods |= {a.name for a in node.names}                       # from vibenanochat import X / from . import X
            elif node.level == 0 and (node.module or "").startswith(PKG + "."):
                mods.add(node.module.split(".")[1])                         # from vibenanochat.X import y
            elif node.level == 1:
                mods.add(node.module.split(".")[0])                         # from .X import y
    return mods


def test_imported_modules_reads_every_form():
    "The import reader itself, on every spelling the book uses (so the ordering test cannot pass by reading nothing)."
    src = ("import vibenanochat.trainer as trainer\nfrom vibenanochat.model import GPT\nfrom vibenanochat import data, evals as ev\n"
           "from .checkpoint import load_model\nfrom . import plumbing\nimport vibenanochat.config, os\nimport torch\n")
    assert imported_modules(src) == {"trainer", "model", "data", "evals", "checkpoint", "plumbing", "config"}
    assert imported_modules("%matplotlib inline\nfrom vibenanochat.tokenizer import get_tokenizer") == {"tokenizer"}
    assert imported_modules("x = !ls\nfrom vibenanochat.data import prepare\nfrom vibenanochat import (assets,\n  scaling)") == \
        {"data", "assets", "scaling"}
    assert [chapter_key(Path(n)) for n in sorted(["10_evals.ipynb", "08a_c.ipynb", "00b_a.ipynb", "00_c.ipynb", "09_t.ipynb",
            "00a_p.ipynb", "08_d.ipynb"], key=lambda n: chapter_key(Path(n)))] == ["00", "00a", "00b", "08", "08a", "09", "10"]


def module_chapters() -> dict[str, Path]:
    "Each library module and the chapter that exports it (from the notebooks' `default_exp`, checked against nbdev's index)."
    mods = {}
    for nb in CHAPTERS:
        m = default_exp(nb)
        if m: mods[m] = nb
    return mods


def test_every_module_has_a_chapter():
    "Every module in nbdev's index and every .py in the package is exported by exactly one chapter."
    from vibenanochat._modidx import d
    mods = module_chapters()
    indexed = {k.split(".", 1)[1] for k in d["syms"]}
    files = {p.stem for p in LIB.glob("*.py") if not p.name.startswith("_")}
    assert not (indexed | files) - set(mods), f"modules with no chapter: {sorted((indexed | files) - set(mods))}"
    exps = [default_exp(nb) for nb in CHAPTERS if default_exp(nb)]
    assert len(exps) == len(set(exps)), f"two chapters export the same module: {exps}"


def test_chapters_import_only_earlier_chapters():
    "A chapter (any of its code cells) may import the modules of its own and earlier chapters, never a later one's."
    mods = module_chapters()
    order = {nb: i for i, nb in enumerate(CHAPTERS)}
    bad = []
    for nb in CHAPTERS:
        for src in code_cells(nb):
            for m in sorted(imported_modules(src)):
                if m not in mods: bad.append(f"{nb.name} imports vibenanochat.{m}, which no chapter exports")
                elif order[mods[m]] > order[nb]: bad.append(f"{nb.name} imports vibenanochat.{m} (chapter {mods[m].name}, later)")
    assert not bad, "chapters importing a later chapter's module:\n  " + "\n  ".join(sorted(set(bad)))


FIGURE_TYPES = ("image/png", "image/svg+xml")


def figures(nb: Path) -> int:
    "How many figures a chapter's stored outputs hold."
    cells = json.loads(nb.read_text())["cells"]
    return sum(any(t in o.get("data", {}) for t in FIGURE_TYPES) for c in cells for o in c.get("outputs", []))


def test_every_chapter_has_a_figure():
    "Each chapter is committed executed with at least one picture (a PNG or SVG output) drawn from its own computations."
    missing = [nb.name for nb in CHAPTERS if figures(nb) == 0]
    assert not missing, f"chapters with no figure in their stored outputs: {', '.join(missing)}"


EXPORT_RE = re.compile(r"^#\s*\|\s*export[is]?\b", re.M)
MAX_EXPORT_LINES = 60


def test_trainer_export_cells_are_small():
    "The trainer chapter teaches in small steps: no exported cell of it is longer than 60 lines."
    nb = next(p for p in CHAPTERS if default_exp(p) == "trainer")
    long = [(i, n) for i, src in enumerate(code_cells(nb)) if EXPORT_RE.search(src) and (n := len(src.splitlines())) > MAX_EXPORT_LINES]
    assert not long, f"{nb.name}: exported cells over {MAX_EXPORT_LINES} lines (code cell index, lines): {long}"


# files and projects a reader does not have; the two path-like ones are spelled in parts so that this file,
# which the repository's own checks also read, does not itself name them
FORBIDDEN = ("DESIGN" + ".md", "anchor", "original VibeNanoChat", "original project", "../" + "shared")


def test_no_references_a_reader_lacks():
    "Chapters (sources and stored outputs) and modules never name files or projects a reader does not have."
    hits = {}
    for path in sorted([*NBS.rglob("*"), *LIB.rglob("*.py")]):
        if not path.is_file() or ".ipynb_checkpoints" in path.parts or path.suffix not in (".ipynb", ".py", ".csv", ".md", ".txt", ".json"):
            continue
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for w in FORBIDDEN:
                if w.lower() in line.lower(): hits.setdefault(f"{path.relative_to(REPO)}: {w!r} on line(s)", []).append(n)
    assert not hits, "words pointing at material a reader does not have:\n  " + "\n  ".join(
        f"{k} {', '.join(map(str, v))}" for k, v in hits.items())


@pytest.mark.parametrize("nb", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_is_valid_json_with_a_title(nb: Path):
    "Each chapter parses and opens with a markdown title (its first line becomes the module's docstring)."
    cells = json.loads(nb.read_text())["cells"]
    assert cells and cells[0]["cell_type"] == "markdown" and "".join(cells[0]["source"]).startswith("# "), nb.name
