#!/usr/bin/env bash
# Air-gapped path: make the base image tag available without a registry.
#
# Usage: scripts/build-base-image.sh [TAG]   (default: debian:trixie-slim)
#
# If the tag is already in the engine, nothing happens. Otherwise we try a
# normal `docker pull`; when no registry answers we build a minimal Debian 13
# (trixie) root file system with debootstrap from the host's own Debian mirror
# and `docker import` it under the same tag, so the Dockerfiles are unchanged.
set -euo pipefail

tag="${1:-debian:trixie-slim}"
suite="${tag#*:}"; suite="${suite%%-*}"
log() { printf '[base-image] %s\n' "$*" >&2; }

if ! docker info >/dev/null 2>&1; then
  log "the Docker engine does not answer: make up checks and (as root) installs it;" \
    "or run sudo scripts/start-docker.sh"
  exit 1
fi
if docker image inspect "$tag" >/dev/null 2>&1; then
  log "$tag is present"
  exit 0
fi
if timeout 60 docker pull -q "$tag" >/dev/null 2>&1; then
  log "pulled $tag"
  exit 0
fi

log "no registry: building $tag with debootstrap ($suite)"
if ! command -v debootstrap >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

# Use the mirror the host already uses (deb822 or classic sources).
mirror="$(grep -rhoE '^(URIs:|deb)\s+\S+' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
  | awk '{print $2}' | grep -E '/debian/?$' | head -n1 || true)"
mirror="${mirror:-http://deb.debian.org/debian}"

rootfs="$(mktemp -d)"
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >/tmp/debootstrap.log 2>&1 \
  || { log "debootstrap failed; see /tmp/debootstrap.log"; exit 1; }
# Keep the image small, as the official slim image does.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*
tar -C "$rootfs" -c . | docker import \
  --change 'CMD ["bash"]' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  - "$tag" >/dev/null
log "imported $tag ($(docker image inspect -f '{{.Size}}' "$tag") bytes)"
