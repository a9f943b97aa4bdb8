# The project image: every KFP task and every TrainJob pod runs the same code as `dvc repro`.
# Base pinned by exact tag (mirror it and pin by digest in your registry). CUDA: the pinned torch 2.14.1
# wheel ships its CUDA runtime (nvidia-* wheels from requirements.lock), so any node with an NVIDIA driver
# and the NVIDIA container runtime can run it; no CUDA toolkit is needed in the image.
FROM python:3.11.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DVC_NO_ANALYTICS=1

# ffmpeg/ffprobe: the binaries ffmpeg-python drives (clip extraction, audio decoding); git for provenance.
# Debian's bookworm packages are fixed per point release; the base tag pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# Dependencies first (a code change does not re-download torch): every version from requirements.lock.
COPY pyproject.toml requirements.lock README.md ./
RUN pip install -c requirements.lock -r requirements.lock
COPY model ./model
COPY xkd ./xkd
COPY components ./components
COPY pipelines ./pipelines
COPY configs ./configs
COPY benchmarks ./benchmarks
COPY data/samples ./data/samples
COPY data/splits ./data/splits
COPY data/paper_results.yaml ./data/
COPY dvc.yaml params.yaml ./
# Editable: the code resolves configs/ and data/ under /app, as in a checkout.
RUN pip install --no-deps -c requirements.lock -e .

# Never run as root in the cluster; no credentials in the image (MLflow's come from a Kubernetes Secret).
RUN useradd --create-home --uid 10001 xkd && chown -R xkd /app
USER 10001
ENTRYPOINT ["python", "-m"]
CMD ["components.extract_clips", "--help"]
