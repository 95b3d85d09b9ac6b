#!/usr/bin/env bash
# Builds the imagerecordsd container image: a static binary built here on
# the host, copied with a CA bundle and a non-root user into an image
# FROM scratch (deploy/Containerfile). No registry is contacted.
#
#   deploy/build-image.sh [IMAGE]
#
# IMAGE defaults to localhost/imagerecords:<version>. The engine is
# $CONTAINER_ENGINE, else podman, else docker, whichever is installed.
# The version stamped into the binary (imagerecordsd --version) is
# $VERSION, else `git describe --tags --always --dirty`, else "dev".
# GOARCH picks another CPU architecture (default: this machine's).
# Build output goes to stderr; the last line on stdout is the image
# reference, so IMAGE="$(deploy/build-image.sh)" works.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

engine="${CONTAINER_ENGINE:-}"
if [[ -z "$engine" ]]; then
	if command -v podman >/dev/null 2>&1; then
		engine=podman
	elif command -v docker >/dev/null 2>&1; then
		engine=docker
	else
		echo "build-image.sh: neither podman nor docker is installed (or set CONTAINER_ENGINE)" >&2
		exit 1
	fi
fi

version="${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}"
# An image tag allows letters, digits, '_', '.' and '-' only.
tag="$(printf '%s' "$version" | tr -c 'A-Za-z0-9_.-' '-')"
image="${1:-localhost/imagerecords:$tag}"

ca_bundle="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
if [[ ! -s "$ca_bundle" ]]; then
	echo "build-image.sh: no CA bundle at $ca_bundle (install ca-certificates, or set CA_BUNDLE)" >&2
	exit 1
fi

context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT

echo "build-image.sh: building imagerecordsd $version (GOARCH=${GOARCH:-$(go env GOARCH)})" >&2
CGO_ENABLED=0 GOOS=linux go build -trimpath \
	-ldflags "-s -w -X github.com/imagerecords/imagerecords/service/gateway.version=$version" \
	-o "$context/imagerecordsd" ./cmd/imagerecordsd
cp "$ca_bundle" "$context/ca-certificates.crt"
echo 'nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin' >"$context/passwd"
echo 'nonroot:x:65532:' >"$context/group"

echo "build-image.sh: $engine build -t $image" >&2
"$engine" build --build-arg "VERSION=$version" -t "$image" -f deploy/Containerfile "$context" >&2
echo "$image"
