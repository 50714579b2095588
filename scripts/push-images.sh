#!/usr/bin/env bash
# make push: push the workspace image to REGISTRY and record the registry's digest for it.
# Swarm nodes pull the users' image by that digest (docs/scale-out.md, "Images"): the hub
# and the Docker proxy take WORKSPACE_IMAGE from the record, so a tag moved later in the
# registry changes nothing that runs.
# usage: REGISTRY=host[:port][/path] push-images.sh LOCAL_IMAGE RECORD_FILE
set -euo pipefail

image=${1:?usage: REGISTRY=... push-images.sh LOCAL_IMAGE RECORD_FILE}
record=${2:?usage: REGISTRY=... push-images.sh LOCAL_IMAGE RECORD_FILE}
if [ -z "${REGISTRY:-}" ]; then
  echo "make push: REGISTRY is empty in the env file: set it to the lab's registry," \
    "e.g. REGISTRY=registry.lab.example.edu:5000/labhub" >&2
  exit 2
fi
if ! docker image inspect "$image" >/dev/null 2>&1; then
  echo "make push: $image is not built on this Docker host: run make build first" >&2
  exit 1
fi

remote="$REGISTRY/${image#labhub/}" # labhub/workspace:0.1.0 -> REGISTRY/workspace:0.1.0
docker tag "$image" "$remote"
if ! output=$(docker push "$remote" 2>&1); then
  printf '%s\n' "$output" >&2
  echo "make push: pushing $remote failed: is the registry up, and does this Docker" \
    "host trust it (docs/scale-out.md, Images)?" >&2
  exit 1
fi
printf '%s\n' "$output"
# The registry's answer for this push: "<tag>: digest: sha256:<hex> size: <n>".
digest=$(printf '%s\n' "$output" | sed -n 's/^.*: digest: \(sha256:[0-9a-f]\{64\}\) size: [0-9]*$/\1/p' | tail -n1)
if [ -z "$digest" ]; then
  echo "make push: docker push named no digest for $remote; nothing recorded" >&2
  exit 1
fi
pinned="${remote%:*}@$digest"
{
  echo "# Written by make push: the users' image as $REGISTRY holds it, by digest."
  echo "WORKSPACE_IMAGE=$pinned"
} >"$record.partial"
mv "$record.partial" "$record"
echo "make push: $image is $pinned (recorded in $record)"
