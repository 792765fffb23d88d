# Ubuntu operating-system element: identity of the distribution.
# Sourced under `set -eu`; reads only declared variables via ${VAR:-default}.

export DISTRO_NAME=ubuntu
export DIB_RELEASE="${DIB_RELEASE:-noble}"
export DIB_INIT_SYSTEM=systemd
export EFI_BOOT_DIR=EFI/ubuntu
export DIB_DEBIAN_COMPONENTS="${DIB_DEBIAN_COMPONENTS:-main,universe}"

# The Ubuntu cloud image root filesystem for DIB_RELEASE: ccb's manifests give
# it as an artifact (DIB_UBUNTU_ROOTFS, the verified file, pinned per arch in
# ccb.lock; see manifests/artifacts.ncl). Without one, as DIB: downloaded from
# the directory holding the file and its SHA256SUMS, Ubuntu's public
# cloud-image server by default; a pinned DIB_UBUNTU_ROOTFS_SHA256 replaces the
# SHA256SUMS check.
export DIB_CLOUD_IMAGES="${DIB_CLOUD_IMAGES:-https://cloud-images.ubuntu.com/${DIB_RELEASE}/current}"
export DIB_UBUNTU_ROOTFS_FILE="${DIB_UBUNTU_ROOTFS_FILE:-${DIB_RELEASE}-server-cloudimg-${ARCH}.squashfs}"
export DIB_UBUNTU_ROOTFS_SHA256="${DIB_UBUNTU_ROOTFS_SHA256:-}"

# Package mirror: empty keeps the sources shipped in the cloud image; the
# manifest environment may set one.
export DIB_DISTRIBUTION_MIRROR="${DIB_DISTRIBUTION_MIRROR:-}"

# DIB's ubuntu element defaults cloud-init to the Ec2 datasource. Elements
# sorted earlier (cc-cloud-init) or the manifest may choose another list.
export DIB_CLOUD_INIT_DATASOURCES="${DIB_CLOUD_INIT_DATASOURCES:-Ec2}"
