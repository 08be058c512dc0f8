#!/bin/sh
# A local Debian base image with Python 3.11, for machines that cannot pull from an image registry.
#
#   docker/local-base.sh [TAG]          (default TAG: l2r-base:bookworm; then build with BASE_IMAGE=TAG)
#
# Needs root (debootstrap), debootstrap (apt-get install debootstrap) and a Docker engine (DOCKER_HOST
# as for any docker command). It debootstraps a minimal Debian bookworm (Python 3.11, the Python of the
# pinned cp311 torch wheel) with python3, python3-pip, ca-certificates and passwd (useradd), copies the
# host's CA bundle into it (package registries reached through a proxy whose CA only the host trusts
# then work inside the build too), and imports it with `docker import`: ~1 min, nothing pulled.
# An existing TAG is kept (docker image rm TAG to rebuild it).
#
# L2R_DOCKER_CACHE=DIR keeps the root filesystem tarball as DIR/base/local-base-KEY.tar (KEY: a hash
# of this script and the host's CA bundle), so that a fresh engine gets the image again without
# debootstrap (the container tests use this).
set -eu

tag=${1:-l2r-base:bookworm}
suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=python3,python3-pip,ca-certificates,passwd
ca_bundle=/etc/ssl/certs/ca-certificates.crt

say() { echo "local-base: $*" >&2; }
fail() { say "$*"; exit 1; }

if docker image inspect "$tag" >/dev/null 2>&1; then
    say "$tag exists (docker image rm $tag to rebuild it)"
    exit 0
fi
[ -f "$ca_bundle" ] || fail "no CA bundle at $ca_bundle (apt-get install ca-certificates)"

# debootstrap ROOTFS: a minimal Debian with Python and the host's CA bundle.
make_rootfs() {
    [ "$(id -u)" = 0 ] || fail "debootstrap needs root: run this as root (or sudo)"
    command -v debootstrap >/dev/null || fail "debootstrap is missing: apt-get install debootstrap"
    say "debootstrap $suite ($packages) into $1 (~1 min)"
    debootstrap --variant=minbase --include="$packages" "$suite" "$1" "$mirror" >&2
    cp "$ca_bundle" "$1/etc/ssl/certs/ca-certificates.crt"
    rm -rf "$1"/var/cache/apt/archives/*.deb "$1"/var/lib/apt/lists/*
}

# docker import (a tar stream on stdin) with the image settings a Dockerfile base needs.
import_image() {
    docker import --change "ENV LANG=C.UTF-8" --change "ENV PIP_CERT=$ca_bundle" \
        --change 'CMD ["/bin/bash"]' - "$tag" >/dev/null
    say "imported $tag"
}

work=$(mktemp -d "${TMPDIR:-/var/tmp}/l2r-local-base.XXXXXX")
cleanup() {
    for mount in proc sys dev/pts; do  # left mounted only by a debootstrap that failed half-way
        mountpoint -q "$work/rootfs/$mount" 2>/dev/null && umount -l "$work/rootfs/$mount"
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -z "${L2R_DOCKER_CACHE:-}" ]; then
    make_rootfs "$work/rootfs"
    tar -C "$work/rootfs" --numeric-owner -c . | import_image
    exit 0
fi

key=$(cat "$0" "$ca_bundle" | sha256sum | cut -c1-12)
tarball="$L2R_DOCKER_CACHE/base/local-base-$key.tar"
mkdir -p "$L2R_DOCKER_CACHE/base"
(
    flock 9  # one builder at a time (the same lock file as tests/docker_engine.py)
    if [ ! -f "$tarball" ]; then
        make_rootfs "$work/rootfs"
        tar -C "$work/rootfs" --numeric-owner -cf "$tarball.partial" .
        find "$L2R_DOCKER_CACHE/base" -name 'local-base-*.tar' ! -name "local-base-$key.tar" -delete
        mv "$tarball.partial" "$tarball"
    else
        say "root filesystem from $tarball"
    fi
) 9>"$L2R_DOCKER_CACHE/.lock"
import_image <"$tarball"
