#!/usr/bin/env bash
# Build a minimal Debian bookworm base image locally with debootstrap, for hosts that cannot pull from a registry.
#
#   scripts/docker_base_image.sh [IMAGE_NAME]         # default: patchcore-base:bookworm
#
# The image plays the part of `debian:bookworm-slim`: pass it to the Dockerfile with
#   docker build --build-arg BASE_IMAGE=patchcore-base:bookworm ...
# It uses the Debian mirror the host's apt sources already name (override with DEBIAN_MIRROR / DEBIAN_SECURITY_MIRROR)
# and copies the host's "Check-Valid-Until" apt setting (snapshot mirrors serve expired Release files).
# Env: DEBIAN_SUITE (bookworm), FORCE=1 to rebuild even if the image exists, KEEP_ROOTFS=1 to keep the debootstrap dir.
set -euo pipefail

IMAGE=${1:-${BASE_IMAGE:-patchcore-base:bookworm}}
SUITE=${DEBIAN_SUITE:-bookworm}
log() { echo "[docker_base_image] $*" >&2; }

if [[ "${FORCE:-0}" != 1 ]] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    log "$IMAGE already exists (FORCE=1 to rebuild)"
    exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    log "installing debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
fi

# First Debian (non-security) and security URIs from the host's apt sources, deb822 or one-line format.
host_uris() {
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | sed -n -e 's/^URIs:[[:space:]]*//p' -e 's/^deb[[:space:]]\+\(\[[^]]*\][[:space:]]\+\)\?\([^[:space:]]\+\).*/\2/p' \
        | tr ' ' '\n' | grep -E '^https?://' || true
}
MIRROR=${DEBIAN_MIRROR:-$(host_uris | grep -E '/debian/?$' | head -n1)}
SECURITY=${DEBIAN_SECURITY_MIRROR:-$(host_uris | grep -E '/debian-security/?$' | head -n1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY=${SECURITY:-http://deb.debian.org/debian-security}
log "suite $SUITE, mirror $MIRROR, security $SECURITY"

ROOTFS=$(mktemp -d /var/tmp/patchcore-rootfs.XXXXXX)
cleanup() { [[ "${KEEP_ROOTFS:-0}" == 1 ]] || rm -rf "$ROOTFS"; }
trap cleanup EXIT

debootstrap --variant=minbase "$SUITE" "$ROOTFS" "$MIRROR" >&2

cat > "$ROOTFS/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY $SUITE-security main
SOURCES
if grep -rqs 'Check-Valid-Until[[:space:]]*"false"' /etc/apt/apt.conf.d/; then
    echo 'Acquire::Check-Valid-Until "false";' > "$ROOTFS/etc/apt/apt.conf.d/99no-check-valid-until"
fi
# What debian:*-slim does: no recommends, no docs/caches kept.
echo 'APT::Install-Recommends "false";' > "$ROOTFS/etc/apt/apt.conf.d/99no-recommends"
find "$ROOTFS/var/lib/apt/lists" -maxdepth 1 -type f -delete
rm -rf "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb \
       "$ROOTFS"/var/log/*.log "$ROOTFS"/tmp/*

chmod 0755 "$ROOTFS"   # mktemp made it 0700, and it becomes the image's "/"
tar --numeric-owner -C "$ROOTFS" -c . \
    | docker import --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
                    --change 'CMD ["/bin/bash"]' - "$IMAGE" >/dev/null
log "imported $IMAGE ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
