# cc-centos9-stream: CentOS Stream 9 with an XFS root filesystem.
# Sorted before the centos element's 10-* file.

export DIB_RELEASE="${DIB_RELEASE:-9-stream}"

# XFS root, as CentOS images use. Assigned, not defaulted: the engine's core
# default (ext4, as in DIB) would otherwise win. block-device-efi's mkfs_root
# takes its type from FS_TYPE; the root label becomes img-rootfs.
export FS_TYPE=xfs
