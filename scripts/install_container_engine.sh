#!/usr/bin/env bash
# Make a container engine usable for tritonkit's docker runtime and its tests (idempotent).
#
# Where a Docker engine already answers, nothing is done. Otherwise, as root on Debian/Ubuntu:
# podman + runc + mmdebstrap + podman-docker from apt, a containers.conf that works on hosts where
# crun and podman's default limits do not (hybrid cgroups, no CAP_SYS_RESOURCE), and a local
# Debian base image (no registry needed) unless it is already there. Anything it cannot do is
# said on stderr and the script exits 0: the container tests then skip and say why.
set -euo pipefail

BASE_IMAGE="${TRITONKIT_LOCAL_BASE:-local/debian:bookworm}"
SUITE="${TRITONKIT_LOCAL_SUITE:-bookworm}"
CONF_DIR=/etc/containers/containers.conf.d
CONF="$CONF_DIR/50-tritonkit.conf"

say() { echo "install_container_engine: $*" >&2; }

if command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1 \
    && ! docker version 2>/dev/null | grep -qi podman; then
  say "a Docker engine answers; nothing to install"
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  command -v podman >/dev/null 2>&1 || { say "not root and no podman: install podman yourself (container tests will skip)"; exit 0; }
  SUDO_NEEDED=1
else
  SUDO_NEEDED=0
fi

missing=()
for tool in podman runc mmdebstrap iptables; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
[ -e /usr/bin/docker ] || missing+=(podman-docker)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$SUDO_NEEDED" = 1 ] || ! command -v apt-get >/dev/null 2>&1; then
    say "missing ${missing[*]} and cannot install them here (needs root and apt-get)"
    exit 0
  fi
  say "installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends podman runc mmdebstrap podman-docker \
    iptables catatonit netavark aardvark-dns uidmap >/dev/null
fi

if [ "$SUDO_NEEDED" = 0 ]; then
  # crun fails on hybrid cgroup hosts; podman's default nofile/nproc need CAP_SYS_RESOURCE.
  want="# written by tritonkit's scripts/install_container_engine.sh
[containers]
default_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]

[engine]
runtime = \"runc\"
"
  mkdir -p "$CONF_DIR"
  if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$(printf '%s' "$want")" ]; then
    printf '%s' "$want" > "$CONF"
    say "wrote $CONF (runtime runc, ulimits nofile=20000 nproc=32768)"
  fi
  # podman-docker prints a notice on every call unless this file exists.
  touch /etc/containers/nodocker
fi

if podman image exists "$BASE_IMAGE"; then
  exit 0
fi
say "building the base image $BASE_IMAGE with mmdebstrap (about 30 s)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mmdebstrap --quiet --variant=minbase "$SUITE" "$tmp/rootfs.tar"
podman import --quiet "$tmp/rootfs.tar" "$BASE_IMAGE" >/dev/null
say "imported $BASE_IMAGE ($(podman image inspect -f '{{.Size}}' "$BASE_IMAGE") bytes)"
