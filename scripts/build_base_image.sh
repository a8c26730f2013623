#!/usr/bin/env bash
# Build a Python 3.11 base image from Debian packages, for machines that reach a Debian mirror
# but no registry of images (DESIGN.md §8). Give the result to the Dockerfiles as BASE_IMAGE.
#   scripts/build_base_image.sh [IMAGE] [MIRROR]    (default localhost/hfmesh-base:bookworm)
# Needs root, debootstrap and podman (or docker: set CONTAINER_ENGINE=docker).
set -euo pipefail
image=${1:-localhost/hfmesh-base:bookworm}
mirror=${2:-http://deb.debian.org/debian}
engine=${CONTAINER_ENGINE:-podman}
rootfs=$(mktemp -d /var/tmp/hfmesh-base.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
# bookworm's Python is 3.11; python3-venv brings the pip wheel the images' venv starts from (the
# system pip, python3-pip, is not needed).
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$rootfs" "$mirror" >/dev/null
# What a slim image leaves out: downloaded packages, package lists, docs (copyrights kept).
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
  "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/* "$rootfs"/usr/share/info/*
find "$rootfs"/usr/share/doc -type f ! -name copyright -delete
tar -C "$rootfs" -c . | "$engine" import \
  --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$image" >/dev/null
"$engine" image inspect --format '{{.Size}}' "$image" | awk -v i="$image" '{printf "%s: %.0f MB\n", i, $1/1e6}'
