# CentOS Stream operating-system element: identity of the distribution.
# Sourced under `set -eu`; reads only declared variables via ${VAR:-default}.

export DISTRO_NAME=centos
export DIB_RELEASE="${DIB_RELEASE:-9-stream}"
export DIB_INIT_SYSTEM=systemd
export EFI_BOOT_DIR=EFI/centos

# The root filesystem: CentOS Stream's container base image (a root tarball, or a
# docker-archive of one). ccb's manifests give it as an artifact (DIB_CENTOS_ROOTFS, pinned
# per arch in ccb.lock). Without one: from CentOS's public cloud server, verified against the
# directory's CHECKSUM file; DIB_CENTOS_ROOTFS_SHA256 pins it instead.
case "${ARCH:-amd64}" in
    arm64|aarch64)
        _centos_arch=aarch64
        ;;
    *)
        _centos_arch=x86_64
        ;;
esac
_centos_major=${DIB_RELEASE%-stream}
export DIB_CENTOS_ROOTFS_URL="${DIB_CENTOS_ROOTFS_URL:-https://cloud.centos.org/centos/${_centos_major}-stream/${_centos_arch}/images/CentOS-Stream-Container-Base-${_centos_major}-latest.${_centos_arch}.tar.xz}"
export DIB_CENTOS_ROOTFS_SUMS="${DIB_CENTOS_ROOTFS_SUMS:-${DIB_CENTOS_ROOTFS_URL%/*}/CHECKSUM}"
export DIB_CENTOS_ROOTFS_SHA256="${DIB_CENTOS_ROOTFS_SHA256:-}"
unset _centos_arch _centos_major

# Package mirror (dnf baseurl prefix): empty keeps the repositories shipped in
# the image.
export DIB_DISTRIBUTION_MIRROR="${DIB_DISTRIBUTION_MIRROR:-}"
