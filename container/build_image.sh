#!/usr/bin/env bash
# `make image`: build the project image with docker or podman (whichever runs here; podman is installed when
# neither does and this runs as root on Debian). The base is always pinned by digest; the git commit is baked
# in as XKD_GIT_COMMIT (the image has no .git); the wall time and the image size are printed.
#   IMAGE       the tag to build (default xkd-pipeline:0.1.0, the components' placeholder image)
#   BASE_IMAGE  NAME@sha256:<64 hex>; when empty it is resolved from BASE_TAG in the local image store
#   BASE_TAG    default docker.io/library/python:3.11.7-slim-bookworm: pulled when absent, else (no registry
#               reachable, root) a local stand-in is made with mmdebstrap (container/local_base.sh)
#   ENGINE      docker | podman, to choose
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-xkd-pipeline:0.1.0}
BASE_TAG=${BASE_TAG:-docker.io/library/python:3.11.7-slim-bookworm}
BASE_IMAGE=${BASE_IMAGE:-}

die() { echo "error: $*" >&2; exit 2; }

if [ -n "$BASE_IMAGE" ] && ! [[ $BASE_IMAGE =~ ^[a-z0-9][a-z0-9._/:-]*@sha256:[0-9a-f]{64}$ ]]; then
  die "BASE_IMAGE=$BASE_IMAGE is not pinned by digest: give NAME@sha256:<64 hex> (README: Build the image)"
fi

ENGINE=$(container/engine.sh)
echo "engine: $ENGINE ($($ENGINE --version))"

if [ -z "$BASE_IMAGE" ]; then
  if ! $ENGINE image inspect "$BASE_TAG" >/dev/null 2>&1 && ! $ENGINE pull -q "$BASE_TAG" >/dev/null 2>&1; then
    [ "$ENGINE" = podman ] || die "cannot pull $BASE_TAG; pass BASE_IMAGE=NAME@sha256:<digest> of a base you have"
    echo "warning: $BASE_TAG cannot be pulled here: building a local stand-in (Debian bookworm + python3)" >&2
    container/local_base.sh "$BASE_TAG"
  fi
  # RepoDigests: NAME@sha256:<manifest digest>, what a registry serves and FROM can pin
  BASE_IMAGE=$($ENGINE image inspect --format '{{index .RepoDigests 0}}' "$BASE_TAG" 2>/dev/null || true)
  [[ $BASE_IMAGE == *@sha256:* ]] || die "$BASE_TAG has no digest in the local store (built, not pulled?): pass BASE_IMAGE"
fi

COMMIT=$(git rev-parse HEAD 2>/dev/null || true)
[ -n "$COMMIT" ] || die "not a git checkout: the image's XKD_GIT_COMMIT would be empty"
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
  echo "warning: the work tree differs from $COMMIT; the image holds the work tree, its XKD_GIT_COMMIT says $COMMIT" >&2
fi

BUILD=(build --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "XKD_GIT_COMMIT=$COMMIT" -t "$IMAGE")
# a CA bundle pip must trust (TLS-inspecting proxy): PIP_CA, else pip's own PIP_CERT; mounted as a build secret
PIP_CA=${PIP_CA:-${PIP_CERT:-}}
[ -n "$PIP_CA" ] && [ -s "$PIP_CA" ] && BUILD+=(--secret "id=pip_ca,src=$PIP_CA")
BUILD+=(.)
# podman in a container without nested namespaces: RUN steps in a chroot (the host's network, no new netns)
[ "$ENGINE" = podman ] && BUILD=(build --isolation=chroot "${BUILD[@]:1}")
echo "building $IMAGE from $BASE_IMAGE at commit $COMMIT"
start=$(date +%s)
$ENGINE "${BUILD[@]}"
size=$($ENGINE image inspect --format '{{.Size}}' "$IMAGE")
echo "image $IMAGE: $(awk -v b="$size" 'BEGIN{printf "%.2f GB (%.0f bytes)", b/1e9, b}'), built in $(($(date +%s) - start)) s"
