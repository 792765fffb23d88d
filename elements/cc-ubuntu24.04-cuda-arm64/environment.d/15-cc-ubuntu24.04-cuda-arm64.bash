# cc-ubuntu24.04-cuda-arm64: child image layered on cc-ubuntu24.04 (arm64), for the Grace
# Hopper GH200 nodes. Sorted after the operating-system elements (10-*) and before cc-cuda
# (20-*), which reads these.

export CC_CUDA_GENERATION=12
# GH200 needs NVIDIA's open kernel modules; the sbsa repository (cc-cuda picks it for arm64)
# carries them.
export CC_NVIDIA_DRIVER_FLAVOR=open

# Page size of the kernel the image boots: `4k` keeps Ubuntu's generic kernel, `64k` adds
# linux-generic-64k and makes GRUB prefer it (better for large-memory GPU work, but some
# software assumes 4K pages).
export CC_ARM64_KERNEL_PAGES="${CC_ARM64_KERNEL_PAGES:-4k}"
case "${CC_ARM64_KERNEL_PAGES}" in
    4k|64k)
        ;;
    *)
        echo "cc-ubuntu24.04-cuda-arm64: CC_ARM64_KERNEL_PAGES='${CC_ARM64_KERNEL_PAGES}' is not 4k or 64k" >&2
        exit 1
        ;;
esac

if [ "${DISTRO_NAME:-}" != ubuntu ] || [ "${DIB_RELEASE:-}" != noble ]; then
    echo "cc-ubuntu24.04-cuda-arm64: must be layered on cc-ubuntu24.04 (ubuntu noble); got DISTRO_NAME='${DISTRO_NAME:-}' DIB_RELEASE='${DIB_RELEASE:-}'" >&2
    exit 1
fi
case "${ARCH:-}" in
    arm64|aarch64)
        ;;
    *)
        echo "cc-ubuntu24.04-cuda-arm64: an arm64 image (NVIDIA's sbsa repository); got ARCH='${ARCH:-}'" >&2
        exit 1
        ;;
esac
