#!/usr/bin/env bash
# A local stand-in for the base image where no registry can be pulled (root, Debian): Debian bookworm minbase +
# python3 (3.11, with venv) made with mmdebstrap and imported into podman under the tag the build expects.
# It is not python.org's build: the image is proven on Debian's CPython 3.11, not on the upstream slim image.
set -euo pipefail
TAG=${1:?usage: local_base.sh TAG}
[ "$(id -u)" = 0 ] || { echo "error: mmdebstrap needs root here; pull $TAG or pass BASE_IMAGE instead" >&2; exit 2; }
if ! command -v mmdebstrap >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap
fi
tar=$(mktemp --suffix=.tar)
trap 'rm -f "$tar"' EXIT
mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$tar"
podman import --change 'CMD ["python3"]' "$tar" "$TAG" >/dev/null
echo "local base $TAG: $(podman image inspect --format '{{index .RepoDigests 0}}' "$TAG")"
