# initramfs: which tool builds the image's initramfs. Empty keeps the distribution's own
# (initramfs-tools on Debian and Ubuntu up to 24.04, dracut on the redhat family); `dracut`
# installs dracut and makes it build a generic initramfs.

export DIB_INITRAMFS="${DIB_INITRAMFS:-}"
case "${DIB_INITRAMFS}" in
    ""|dracut)
        ;;
    *)
        echo "initramfs: unknown DIB_INITRAMFS '${DIB_INITRAMFS}' (supported: dracut, or empty for the distribution's own)" >&2
        exit 1
        ;;
esac
