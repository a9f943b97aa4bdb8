"""The install contract: the README's two commands, pinned dependencies, CI calling the README's test."""

import re
import tomllib

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
    assert "-c requirements.lock" in docker and re.search(r"^FROM \S+:\d+\.\d+\.\d+-", docker, re.M)
