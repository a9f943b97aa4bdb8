# The project image: every KFP task and every TrainJob pod runs the same code as `dvc repro`.
# Exact base tag (pin by digest in your registry mirror); CUDA comes with the pinned torch wheels.
FROM python:3.11.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DVC_NO_ANALYTICS=1

# ffmpeg/ffprobe: the binaries ffmpeg-python drives (clip extraction, audio decoding).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ffmpeg git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml requirements.lock README.md ./
COPY model ./model
COPY components ./components
COPY pipelines ./pipelines
RUN pip install -c requirements.lock .

COPY configs ./configs
COPY benchmarks ./benchmarks
COPY dvc.yaml params.yaml ./

# Never run as root in the cluster.
RUN useradd --create-home --uid 10001 xkd && chown -R xkd /app
USER 10001
ENTRYPOINT ["python", "-m"]
CMD ["components.extract_clips", "--help"]
