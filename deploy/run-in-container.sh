#!/bin/sh
# Runs imagerecordsd from a container image as if it were the binary: the
# same arguments, stdout, stderr, signals and exit code, on the host's
# network, with the restrictions of the Kubernetes manifests (read-only
# root filesystem, no capabilities, no privilege escalation, the image's
# non-root user). The interop tests use it to run against the image:
#
#   IMAGE=localhost/imagerecords:dev IMAGERECORDSD=deploy/run-in-container.sh npm test
#
# IMAGE is the image; CONTAINER_ENGINE the engine (default podman, else
# docker). Containers carry the label imagerecords.run-in-container, so
# that a caller can remove any left behind by a killed run:
#   podman rm -f $(podman ps -aq --filter label=imagerecords.run-in-container)
set -eu
: "${IMAGE:?set IMAGE to the image to run}"
engine="${CONTAINER_ENGINE:-}"
if [ -z "$engine" ]; then
	if command -v podman >/dev/null 2>&1; then engine=podman; else engine=docker; fi
fi
# The image's admin port would collide on the host network: off unless
# the arguments ask for it.
exec "$engine" run --rm -i --network host --read-only --cap-drop ALL \
	--security-opt no-new-privileges --label imagerecords.run-in-container=1 \
	-e IMAGERECORDS_ADMIN_LISTEN= "$IMAGE" "$@"
