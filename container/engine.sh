#!/usr/bin/env bash
# Prints the container engine to use: $ENGINE if set, else docker when its daemon answers, else podman; when
# neither runs and this is root on Debian, installs podman (the Debian packages, runc as its runtime) first.
set -euo pipefail
if [ -n "${ENGINE:-}" ]; then echo "$ENGINE"; exit 0; fi
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then echo docker; exit 0; fi
if command -v podman >/dev/null; then echo podman; exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "no docker daemon and no podman: installing podman (Debian packages)" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    podman runc netavark aardvark-dns iptables uidmap slirp4netns fuse-overlayfs catatonit >&2
  echo podman
  exit 0
fi
echo "error: no container engine: start a docker daemon or install podman" >&2
exit 2
