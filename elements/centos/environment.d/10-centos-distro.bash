# CentOS Stream operating-system element: identity of the distribution.
# Sourced under `set -eu`; reads only declared variables via ${VAR:-default}.

export DISTRO_NAME=centos
export DIB_RELEASE="${DIB_RELEASE:-9-stream}"
export DIB_INIT_SYSTEM=systemd
export EFI_BOOT_DIR=EFI/centos

# The root filesystem comes from a CentOS Stream generic cloud image or rootfs
# tarball declared in the manifests; the digest pins it.
export DIB_CENTOS_ROOTFS_URL="${DIB_CENTOS_ROOTFS_URL:-}"
export DIB_CENTOS_ROOTFS_SHA256="${DIB_CENTOS_ROOTFS_SHA256:-}"

# Package mirror (dnf baseurl prefix): empty keeps the repositories shipped in
# the image.
export DIB_DISTRIBUTION_MIRROR="${DIB_DISTRIBUTION_MIRROR:-}"
