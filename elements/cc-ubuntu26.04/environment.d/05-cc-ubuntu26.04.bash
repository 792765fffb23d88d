# cc-ubuntu26.04: Ubuntu 26.04 (resolute). Sorted before the ubuntu element's 10-* file,
# whose own default then keeps this value.

export DIB_RELEASE="${DIB_RELEASE:-resolute}"

# Ubuntu 26.04 builds its initramfs with dracut. Upstream's first images kept dracut's
# default host-only mode, which packed only the build host's drivers, and hung on NVMe
# machines: the initramfs element makes it generic (--no-hostonly). Assigned, not defaulted:
# initramfs-tools is not what this release ships.
export DIB_INITRAMFS=dracut
