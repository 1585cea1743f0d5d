#!/usr/bin/env bash
# Builds (once) a container image that stands in for a fresh Debian 12 edge box with systemd as PID 1,
# for tests/test_edge_systemd.py: the installed .deb's unit started by systemd, reloads, logrotate.
#
#   scripts/edge-box-image.sh          # prints the image name; builds it first if it is missing
#
# The root file system is made from Debian packages (mmdebstrap, minbase + systemd, systemd-sysv,
# logrotate and the package's dependencies python3.11, adduser and procps; about 140 MB, 1-2 minutes) and
# imported into podman; the tag carries a hash of the recipe, so a changed recipe builds a new image.
# Run it with `podman run --systemd=always … /sbin/init`.
set -euo pipefail

recipe=(--variant=minbase --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
        '--include=systemd,systemd-sysv,logrotate,python3.11,adduser,procps'
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*'
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
        bookworm)
image=localhost/ems-edge-box:bookworm-$(printf '%s\n' "${recipe[@]}" | sha256sum | cut -c1-12)
if ! podman image exists "$image"; then
    for tool in mmdebstrap podman; do
        command -v "$tool" >/dev/null || { echo "error: $tool is missing: scripts/install-system-packages.sh --images" >&2; exit 1; }
    done
    tar=$(mktemp --suffix=.tar)
    trap 'rm -f "$tar"' EXIT
    echo "building $image (mmdebstrap ${recipe[*]})" >&2
    mmdebstrap --quiet "${recipe[@]}" "$tar" >&2
    podman import --quiet --change 'CMD ["/sbin/init"]' "$tar" "$image" >/dev/null
fi
echo "$image"
