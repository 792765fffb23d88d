# bootloader: GRUB defaults for Chameleon images.
# Sourced under `set -eu`; later environment files (sorted after this one) may
# extend these values, e.g. cc-ubuntu24.04-rocm appends to the command line.

export DIB_GRUB_TIMEOUT="${DIB_GRUB_TIMEOUT:-0}"
export DIB_GRUB_TIMEOUT_STYLE="${DIB_GRUB_TIMEOUT_STYLE:-menu}"

# DIB's own default ("nofb nomodeset gfxpayload=text") is deliberately not used.
export DIB_BOOTLOADER_DEFAULT_CMDLINE="${DIB_BOOTLOADER_DEFAULT_CMDLINE:-gfxpayload=text pci=realloc=off}"

case "${ARCH:-}" in
    arm64|aarch64)
        _bootloader_serial_default="ttyAMA0,115200"
        ;;
    *)
        _bootloader_serial_default="ttyS0,115200"
        ;;
esac
export DIB_BOOTLOADER_SERIAL_CONSOLE="${DIB_BOOTLOADER_SERIAL_CONSOLE:-${_bootloader_serial_default}}"
unset _bootloader_serial_default

# "True" skips the GRUB packages below (as DIB's bootloader element does).
export DIB_SKIP_GRUB_PACKAGE_INSTALL="${DIB_SKIP_GRUB_PACKAGE_INSTALL:-False}"

# package-installs `when` conditions read DIB_BLOCK_DEVICE; a condition on an
# unset variable is an error, so default it to empty here. block-device-*
# elements (sorted later) set the real value.
export DIB_BLOCK_DEVICE="${DIB_BLOCK_DEVICE:-}"
