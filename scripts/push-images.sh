#!/usr/bin/env bash
# make push: push the images the Swarm nodes run (the users' images and the hub image, which
# the nodes' Docker proxies run) to REGISTRY and record the registry's digest for each.
# make up (ENGINE=swarm with REGISTRY) checks the record first (--check).
# Swarm nodes pull those images by these digests (docs/scale-out.md, "Images"): the hub
# and the Docker proxy take them from the record (IMAGE_DIGESTS), make up the node proxies'
# (--ref), so a tag moved later in the registry changes nothing that runs.
# usage: REGISTRY=host[:port][/path] push-images.sh RECORD_FILE LOCAL_IMAGE...
#        push-images.sh --check RECORD_FILE LOCAL_IMAGE...
#        push-images.sh --ref RECORD_FILE LOCAL_IMAGE   (prints its digest reference)
set -euo pipefail

usage="usage: REGISTRY=... push-images.sh [--check|--ref] RECORD_FILE LOCAL_IMAGE..."
mode=push
case "${1:-}" in
  --check | --ref)
    mode=${1#--}
    shift
    ;;
esac
record=${1:?$usage}
shift
[ "$#" -gt 0 ] || { echo "$usage" >&2; exit 2; }

# The digest reference the record holds for a local image, or nothing.
recorded() {
  [ -f "$record" ] || return 0
  sed -n 's/^IMAGE_DIGESTS=//p' "$record" | tail -n1 | tr ',' '\n' |
    awk -F= -v image="$1" '$1 == image { print $2 }'
}

if [ "$mode" = ref ]; then
  pinned=$(recorded "$1")
  if [ -z "$pinned" ]; then
    echo "make up: $record has no digest for $1: run make push" >&2
    exit 1
  fi
  echo "$pinned"
  exit 0
fi

if [ "$mode" = check ]; then
  # make up (or make z2jh-values: GOAL): every image is in the record, and the image this
  # engine has under its tag is the one pushed (its RepoDigests name the recorded reference;
  # a rebuild moves the tag).
  if [ ! -f "$record" ]; then
    echo "make ${GOAL:-up}: $record is missing: with ENGINE=swarm and REGISTRY the nodes pull the" \
      "users' images from the registry by digest: run make push (after make build)" >&2
    exit 1
  fi
  for image in "$@"; do
    if [ -z "$(recorded "$image")" ]; then
      echo "make ${GOAL:-up}: $record has no digest for $image: run make push" >&2
      exit 1
    fi
  done
  for image in "$@"; do
    pinned=$(recorded "$image")
    if ! digests=$(docker image inspect --format '{{join .RepoDigests " "}}' "$image" 2>/dev/null); then
      echo "make ${GOAL:-up}: $image is not on this Docker host (the manager, where make push" \
        "ran): run make build, then make push" >&2
      exit 1
    fi
    case " $digests " in
      *" $pinned "*) ;;
      *)
        echo "make ${GOAL:-up}: $image here is not the image make push recorded ($pinned):" \
          "it was built again after the push: run make push" >&2
        exit 1
        ;;
    esac
  done
  exit 0
fi

if [ -z "${REGISTRY:-}" ]; then
  echo "make push: REGISTRY is empty in the env file: set it to the lab's registry," \
    "e.g. REGISTRY=registry.lab.example.edu:5000/labhub" >&2
  exit 2
fi
for image in "$@"; do
  if ! docker image inspect "$image" >/dev/null 2>&1; then
    echo "make push: $image is not built on this Docker host: run make build first" >&2
    exit 1
  fi
done

entries=()
for image in "$@"; do
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
  entries+=("$image=${remote%:*}@$digest")
  echo "make push: $image is ${remote%:*}@$digest"
done
{
  echo "# Written by make push: the images the nodes run as $REGISTRY holds them, by digest."
  echo "IMAGE_DIGESTS=$(IFS=,; echo "${entries[*]}")"
} >"$record.partial"
mv "$record.partial" "$record"
echo "make push: recorded in $record"
