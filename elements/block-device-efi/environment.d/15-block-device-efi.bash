# block-device-efi: GPT disk with an EFI system partition and a BIOS boot
# partition. The bootloader element keys its choices off DIB_BLOCK_DEVICE.

case "${ARCH:-}" in
    amd64|x86_64|arm64|aarch64)
        ;;
    *)
        echo "block-device-efi: unsupported ARCH '${ARCH:-}' (amd64 or arm64 only)" >&2
        exit 1
        ;;
esac

export DIB_BLOCK_DEVICE=efi
