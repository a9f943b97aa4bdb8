# The project image: every KFP task and every TrainJob pod runs the same code as `dvc repro`.
# Build it with `make image` (container/build_image.sh): it picks docker or podman, resolves the base's digest
# and bakes in the git commit. CUDA: the pinned torch 2.14.1 wheel is a cu130 build that ships its CUDA runtime
# (nvidia-* wheels from requirements.lock): no CUDA toolkit in the image, but the node needs a recent NVIDIA
# driver and the NVIDIA container runtime (README, "Run on Kubeflow").

# The base, pinned by digest (never by a tag alone): NAME@sha256:<64 hex>. `make image` resolves it from
# BASE_TAG; to pin the upstream one yourself: `docker buildx imagetools inspect python:3.11.7-slim-bookworm`
# (the index digest), or `docker pull` it and read `docker image inspect --format '{{index .RepoDigests 0}}'`.
ARG BASE_IMAGE
# hadolint ignore=DL3006
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DVC_NO_ANALYTICS=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# ffmpeg/ffprobe: the binaries ffmpeg-python drives (clip extraction, audio decoding); git for provenance.
# Debian's bookworm packages are fixed per point release; the base digest pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg git \
    && rm -rf /var/lib/apt/lists/*

# A venv: the same layout on python:*-slim (its own CPython) and on a Debian base (Debian's python3, whose
# system site-packages pip must not touch). Runtime dependencies only: every version from requirements.lock
# (the test tools are in requirements-test.lock and stay out of the image).
# Behind a TLS-inspecting proxy, pass its CA bundle as the build secret `pip_ca` (make image does, from PIP_CERT):
# a secret mount, so it never lands in a layer.
WORKDIR /app
COPY requirements.lock ./
RUN --mount=type=secret,id=pip_ca \
    if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi \
    && python3 -m venv "$VIRTUAL_ENV" \
    && pip install -c requirements.lock -r requirements.lock \
    && pip check
# Files the pipeline creates on the data volume stay group-writable (umask 002), so any pod in the volume's
# group (fsGroup) can extend them, whatever uid it runs as (a .pth runs at every interpreter start).
COPY container/xkd-umask.pth /opt/venv/lib/python3.11/site-packages/xkd-umask.pth

COPY pyproject.toml README.md ./
COPY model ./model
COPY xkd ./xkd
COPY components ./components
COPY pipelines ./pipelines
COPY configs ./configs
COPY data/samples ./data/samples
COPY data/splits ./data/splits
COPY data/paper_results.yaml ./data/
COPY dvc.yaml params.yaml ./
# Editable: the code resolves configs/ and data/ under /app, as in a checkout. No build isolation: the build
# backend is the pinned setuptools already installed (nothing unpinned is fetched).
RUN pip install --no-deps --no-build-isolation -c requirements.lock -e .

# Never run as root in the cluster (uid/gid 10001: the TrainJob's runAsUser/runAsGroup/fsGroup must match);
# no credentials in the image (MLflow's come from a Kubernetes Secret).
RUN groupadd --gid 10001 xkd \
    && useradd --create-home --uid 10001 --gid 10001 xkd \
    && chown -R 10001:10001 /app

# Last, so a new commit rebuilds no layer above: the image has no .git, and the lineage code reads this.
ARG XKD_GIT_COMMIT
ENV XKD_GIT_COMMIT=${XKD_GIT_COMMIT}
LABEL org.opencontainers.image.revision=${XKD_GIT_COMMIT}

USER 10001:10001
ENTRYPOINT ["python", "-m"]
CMD ["components.extract_clips", "--help"]
