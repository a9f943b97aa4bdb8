"""Project hygiene a user relies on without noticing: `dvc repro` re-runs a stage when any code it runs changed.

dvc only re-runs a stage whose declared deps changed. A module the stage's `python -m` entry point imports
(directly, through another project module, or inside a function) that is not under a declared dep leaves a
stale output after an edit. The closure is computed from the sources with `ast`, never by importing them.
"""

from __future__ import annotations

import ast
import io
import re
import shlex
import tokenize
from pathlib import Path

import pytest
import yaml

from xkd.paths import REPO

_VAR = re.compile(r"\$\{([^}]+)\}")
_ENTRY = re.compile(r"python -m ([\w.]+)")
# cmd options whose path the stage writes (its outs, or a content-addressed cache that is neither dep nor out)
WRITTEN = {"--output", "--feature-cache", "--summary", "--plots"}


# --------------------------------------------------------------------------- dvc.yaml, expanded
def _lookup(context: dict, dotted: str):
    value = context
    for key in dotted.strip().split("."):
        value = value[key]
    return value


def _interpolate(text: str, context: dict) -> str:
    return _VAR.sub(lambda m: str(_lookup(context, m.group(1))), text)


def _dep_path(dep) -> str:
    return next(iter(dep)) if isinstance(dep, dict) else dep


def dvc_stages(dvc_file: Path = REPO / "dvc.yaml", params_file: Path = REPO / "params.yaml") -> dict[str, dict]:
    """Every stage of dvc.yaml as {name: {"cmd", "deps", "outs"}}, `foreach` stages expanded, ${...} resolved."""
    params = yaml.safe_load(params_file.read_text())
    stages = {}
    for name, stage in yaml.safe_load(dvc_file.read_text())["stages"].items():
        if "foreach" in stage:
            items = stage["foreach"]
            items = _lookup(params, _VAR.fullmatch(items).group(1)) if isinstance(items, str) else items
            pairs = items.items() if isinstance(items, dict) else enumerate(items)  # dict: ${key} is the name
            expanded = [(f"{name}@{k}", stage["do"], {**params, "item": item, "key": k}) for k, item in pairs]
        else:
            expanded = [(name, stage, params)]
        for key, body, context in expanded:
            stages[key] = {
                "cmd": _interpolate(body["cmd"], context),
                "deps": [_interpolate(_dep_path(d), context).rstrip("/") for d in body.get("deps", [])],
                "outs": [
                    _interpolate(_dep_path(o), context).rstrip("/")
                    for o in body.get("outs", []) + body.get("metrics", [])
                ],
            }
    return stages


# --------------------------------------------------------------------------- import closure (ast only)
def _module_file(module: str, root: Path) -> Path | None:
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_inert(init: Path) -> bool:
    """A package __init__ holding only a docstring runs nothing: a change to it cannot change a stage's output."""
    body = ast.parse(init.read_text()).body
    return all(isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant) for s in body)


def _imported_names(path: Path, module: str) -> set[str]:
    """Dotted names `path` may import, from any depth (function bodies included); relative imports resolved."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module
            names.add(source)
            # `from pkg import sub` imports the submodule pkg.sub when there is one
            names.update(f"{source}.{alias.name}" for alias in node.names)
    return names


def import_closure(entry: str, root: Path = REPO) -> set[Path]:
    """The project files that `python -m entry` executes: the module, what it imports, transitively, and the
    package __init__ files on the way (each `import a.b.c` runs a/__init__ and a/b/__init__ first)."""
    seen: set[Path] = set()
    todo = [entry]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            module = ".".join(parts[:i])
            path = _module_file(module, root)
            if path is None or path in seen:
                continue
            seen.add(path)
            todo.extend(_imported_names(path, module))
    return {p for p in seen if not (p.name == "__init__.py" and _is_inert(p))}


def _covered(rel: Path, deps: list[str]) -> bool:
    return any(rel == Path(d) or rel.is_relative_to(d) for d in deps)


# --------------------------------------------------------------------------- the checks
STAGES = dvc_stages()


def test_the_closure_follows_submodules_function_imports_and_relative_imports(tmp_path):
    """The checker itself: a dep it cannot see would pass the real check for the wrong reason."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text('"""Docstring only: inert."""\n')
    (pkg / "sub" / "__init__.py").write_text("from .deep import VALUE\n")
    (pkg / "sub" / "deep.py").write_text("VALUE = 1\n")
    (pkg / "lazy.py").write_text("X = 2\n")
    (pkg / "child.py").write_text("Y = 3\n")
    (pkg / "unused.py").write_text("Z = 4\n")
    (pkg / "entry.py").write_text(
        "import os\nfrom pkg import child\n\ndef main():\n    from . import lazy\n    import pkg.sub\n"
    )
    found = {p.relative_to(tmp_path).as_posix() for p in import_closure("pkg.entry", tmp_path)}
    assert found == {"pkg/entry.py", "pkg/child.py", "pkg/lazy.py", "pkg/sub/__init__.py", "pkg/sub/deep.py"}


def test_every_stage_runs_a_project_module():
    assert STAGES
    for name, stage in STAGES.items():
        entries = _ENTRY.findall(stage["cmd"])
        assert entries and all(_module_file(e, REPO) for e in entries), f"{name}: no project `python -m` in cmd"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_cover_every_file_its_entry_point_imports(name):
    stage = STAGES[name]
    missing = set()
    for entry in _ENTRY.findall(stage["cmd"]):
        for path in import_closure(entry):
            rel = path.relative_to(REPO)
            if not _covered(rel, stage["deps"]):
                missing.add(rel.as_posix())
    assert not missing, f"dvc.yaml stage {name}: deps miss {sorted(missing)} (declare the package folder)"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_cover_every_path_its_cmd_reads(name):
    """A cache or output passed on the command line is read by the stage: a change to it must re-run it."""
    stage = STAGES[name]
    words = shlex.split(stage["cmd"])
    read = [v for flag, v in zip(words, words[1:]) if flag.startswith("--") and flag not in WRITTEN and "/" in v]
    missing = [p for p in read if not _covered(Path(p), stage["deps"])]
    assert not missing, f"dvc.yaml stage {name}: reads {missing} but does not declare them as deps"


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_exist_unless_another_stage_makes_them(name):
    """A misspelt or moved dep folder would silently cover nothing."""
    outs = [o for stage in STAGES.values() for o in stage["outs"]]
    for dep in STAGES[name]["deps"]:
        produced = any(Path(dep).is_relative_to(o) or Path(o).is_relative_to(dep) for o in outs)
        assert produced or (REPO / dep).exists(), f"dvc.yaml stage {name}: dep {dep} does not exist"


# --------------------------------------------------------------------------- file citations in docs and comments
# Docstrings and comments cite the method spec and design notes (`docs/xkd_spec.md §5.1`, `docs/DESIGN.md`) and
# other project files. A citation of a file the repository does not hold sends a reader nowhere.
SCANNED = ("components", "xkd", "model", "pipelines", "benchmarks", "tests")
_CITED = re.compile(r"(?<![\w./<>$-])([A-Za-z_][\w./-]*\.(?:md|ya?ml|py))(?![\w/])")
# the word before a section sign names the document: it must be a file path too, not a bare nickname
_SECTION = re.compile(r"([A-Za-z_][\w./-]*)`?\s+§")


def _source(path: Path) -> str:
    """A file's text; "" for one removed while the scan runs (others work in this tree concurrently)."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def _comments_and_docstrings(path: Path) -> list[tuple[int, str]]:
    source = _source(path)
    if path.suffix != ".py":  # YAML / TOML: the text after `#` (no value there holds a '#')
        return [(i, line.split("#", 1)[1]) for i, line in enumerate(source.splitlines(), 1) if "#" in line]
    found = [
        (t.start[0], t.string)
        for t in tokenize.generate_tokens(io.StringIO(source).readline)
        if t.type == tokenize.COMMENT
    ]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                found.append((node.body[0].lineno, doc))
    return found


def _string_constants(files: list[Path]) -> set[str]:
    """Every string literal in the code: a file name the code reads or writes (`"report.md"`) is an artifact
    the text describes, not a citation of a repository file."""
    return {
        n.value
        for f in files
        for n in ast.walk(ast.parse(_source(f)))
        if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }


def cited_but_missing(files: list[Path], root: Path = REPO) -> list[str]:
    # names the library and steps write; tests' literals (this file's included) describe nothing
    artifacts = _string_constants([f for f in files if f.suffix == ".py" and "tests" not in f.relative_to(root).parts])
    top = {p.name for p in root.iterdir()}
    bad = []
    for f in files:
        for line, text in _comments_and_docstrings(f):
            tokens = [(t, True) for t in _CITED.findall(text)] + [(t, False) for t in _SECTION.findall(text)]
            for token, maybe_artifact in tokens:
                token = token.rstrip(".")
                in_repo = token.split("/")[0] in top
                if maybe_artifact and not in_repo and Path(token).name in artifacts:
                    continue
                if not ((root / token).exists() or (f.parent / token).exists()):
                    bad.append(f"{f.relative_to(root)}:{line}: {token}")
    return sorted(set(bad))


def _project_files() -> list[Path]:
    """The project's code and, for their comments, its configs (fixtures are vendored official files)."""
    code = [p for d in SCANNED for p in sorted((REPO / d).rglob("*.py")) if "fixtures" not in p.parts]
    configs = sorted((REPO / "configs").rglob("*.yaml")) + sorted((REPO / "data").glob("*.yaml"))
    return code + configs + [REPO / n for n in ("dvc.yaml", "params.yaml", "pyproject.toml")]


def test_citation_check_flags_missing_files_and_bare_document_names(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "spec.md").write_text("# spec\n")
    (tmp_path / "pkg").mkdir()
    code = tmp_path / "pkg" / "m.py"
    code.write_text(
        '"""Per docs/spec.md §2; writes `OUT/report.md`."""\n\n# see spec §3 and docs/gone.md\nNAME = "report.md"\n'
    )
    assert cited_but_missing([code], tmp_path) == ["pkg/m.py:3: docs/gone.md", "pkg/m.py:3: spec"]


def test_every_file_cited_in_docstrings_and_comments_exists():
    missing = cited_but_missing(_project_files())
    assert not missing, "cited files not in the repository (cite e.g. docs/xkd_spec.md §5.1):\n" + "\n".join(missing)


def test_the_cited_team_documents_are_vendored_with_their_provenance():
    for name in ("xkd_spec.md", "DESIGN.md", "STACK.md"):
        assert (REPO / "docs" / name).stat().st_size > 1000, name
        assert name in (REPO / "docs" / "README.md").read_text()


# --------------------------------------------------------------------------- one place per piece of documentation
def shared_blocks(a: list[str], b: list[str], min_lines: int = 6) -> list[tuple[int, int]]:
    """(line in a, line in b), 1-based, where a run of >= min_lines equal non-blank lines starts in both
    (white space folded). Copies drift apart: one of them is soon wrong."""
    fold = [" ".join(line.split()) for line in a], [" ".join(line.split()) for line in b]
    ka = [(i, t) for i, t in enumerate(fold[0]) if t]
    kb = [(j, t) for j, t in enumerate(fold[1]) if t]
    where: dict[str, list[int]] = {}
    for n, (_, t) in enumerate(kb):
        where.setdefault(t, []).append(n)
    found, covered = [], set()
    for m, (i, t) in enumerate(ka):
        for n in where.get(t, []):
            if (m, n) in covered:
                continue
            k = 0
            while m + k < len(ka) and n + k < len(kb) and ka[m + k][1] == kb[n + k][1]:
                covered.add((m + k, n + k))
                k += 1
            if k >= min_lines:
                found.append((i + 1, kb[n][0] + 1))
    return found


def test_shared_blocks_finds_a_copied_section_and_ignores_short_overlaps():
    section = [f"line {i} of the section" for i in range(8)]
    assert shared_blocks(["# A", "", *section], ["intro", *section[:3], "", *section[3:]]) == [(3, 2)]
    assert shared_blocks(["# A", *section[:5]], ["# B", *section[:5]]) == []


def test_no_document_repeats_a_section_of_another():
    """README.md is the overview; a folder's README (pipelines/, configs/, data/splits/) or model/DEVIATIONS.md
    holds the detail once and the other links to it."""
    docs = sorted(
        p
        for p in REPO.rglob("*.md")
        # not environments, vendored fixtures, nor what runs write (the report, caches)
        if not {".venv", ".git", ".pytest_cache", "fixtures", "outputs", "cache", "raw", "mlruns"} & set(p.parts)
    )
    text = {p: _source(p).splitlines() for p in docs}
    copies = [
        f"{a.relative_to(REPO)}:{i} ~ {b.relative_to(REPO)}:{j}"
        for n, a in enumerate(docs)
        for b in docs[n + 1 :]
        for i, j in shared_blocks(text[a], text[b])
    ]
    assert not copies, "sections copied between documents (keep one, link from the other):\n" + "\n".join(copies)


def test_the_repository_root_is_defined_once():
    """Nine modules used to derive the repo root from their own location (parents[1], parent.parent, ...): a
    moved file silently pointed elsewhere. Library, steps, pipelines and model read it from xkd.paths."""
    pattern = re.compile(r"__file__\)?\.resolve\(\)\.parent|__file__\)\.parents\[")
    found = [
        f"{path.relative_to(REPO)}:{n}"
        for folder in ("components", "xkd", "pipelines", "model")
        for path in sorted((REPO / folder).rglob("*.py"))
        if path != REPO / "xkd" / "paths.py"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert found == [], f"derive paths from xkd.paths.REPO instead: {found}"
