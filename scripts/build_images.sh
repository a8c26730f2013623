#!/usr/bin/env bash
# Build hfmesh images from the repository root and print each one's build time and size.
#   scripts/build_images.sh [IMAGE...]   (default: every CPU image; names as in deploy/images/)
# Environment:
#   CONTAINER_ENGINE  podman (default) or docker
#   HFMESH_REGISTRY   image name prefix (default localhost/hfmesh); HFMESH_TAG (default latest)
#   BASE_IMAGE        Python 3.11 base (default: the Dockerfiles' python:3.11-slim)
#   PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS   passed on as build arguments
#   PIP_CA_BUNDLE     a CA file: mounted into the build at the same path and given to pip
#   BUILD_MOUNTS      more `-v SRC:DST:ro` mounts (podman), e.g. a local wheel folder
set -euo pipefail
cd "$(dirname "$0")/.."
engine=${CONTAINER_ENGINE:-podman}
registry=${HFMESH_REGISTRY:-localhost/hfmesh}
tag=${HFMESH_TAG:-latest}
images=("$@")
[ ${#images[@]} -gt 0 ] || images=(gateway tokenizer control-plane engine-hf-cpu models engine-vllm-cpu)

args=(--network host)
[ "$engine" = podman ] && args+=(--format docker)  # OCI images drop HEALTHCHECK
for name in BASE_IMAGE PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_FIND_LINKS PIP_CA_BUNDLE; do
  [ -n "${!name:-}" ] && args+=(--build-arg "$name=${!name}")
done
if [ -n "${PIP_CA_BUNDLE:-}" ]; then args+=(-v "$PIP_CA_BUNDLE:$PIP_CA_BUNDLE:ro"); fi
for mount in ${BUILD_MOUNTS:-}; do args+=(-v "$mount"); done

for image in "${images[@]}"; do
  extra=()
  [ "$image" = models ] && extra=(--build-arg "ENGINE_IMAGE=$registry/engine-hf-cpu:$tag")
  start=$(date +%s)
  "$engine" build "${args[@]}" "${extra[@]}" -f "deploy/images/$image.Dockerfile" \
    -t "$registry/$image:$tag" . >"${BUILD_LOG_DIR:-/tmp}/hfmesh-build-$image.log" 2>&1 \
    || { tail -40 "${BUILD_LOG_DIR:-/tmp}/hfmesh-build-$image.log"; exit 1; }
  size=$("$engine" image inspect --format '{{.Size}}' "$registry/$image:$tag")
  awk -v i="$image" -v s="$(($(date +%s) - start))" -v b="$size" \
    'BEGIN { printf "built %-18s %5d s %6.0f MB\n", i, s, b / 1e6 }'
done
