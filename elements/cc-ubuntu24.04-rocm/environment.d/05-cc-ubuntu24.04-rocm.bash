# cc-ubuntu24.04-rocm: Ubuntu 24.04 with the HWE kernel and AMD ROCm.
# Sorted before the ubuntu element's 10-* file.

export DIB_RELEASE="${DIB_RELEASE:-noble}"

# Kernel metapackage installed instead of the GA kernel's.
export CC_ROCM_KERNEL="${CC_ROCM_KERNEL:-linux-generic-hwe-24.04}"

# Extra kernel command line for GPU compute (IOMMU passthrough), appended to
# the bootloader's defaults by 50-cc-ubuntu24.04-rocm-cmdline.bash. Set it to
# the empty string to append nothing (hence `-`, not `:-`).
case "${ARCH:-}" in
    arm64|aarch64)
        _cc_rocm_cmdline_default="iommu.passthrough=1"
        ;;
    *)
        _cc_rocm_cmdline_default="amd_iommu=on iommu=pt"
        ;;
esac
export CC_ROCM_KERNEL_CMDLINE="${CC_ROCM_KERNEL_CMDLINE-${_cc_rocm_cmdline_default}}"
unset _cc_rocm_cmdline_default

# AMD's apt repositories (ROCm and the amdgpu driver), each "URL [SUITE [COMPONENT...]]": the
# versioned repository of the pinned ROCm release (6.4.1), its suite (default DIB_RELEASE) and
# components (default main). AMD's public server by default, as AMD documents; set them in the
# manifests to use a mirror.
export CC_ROCM_REPO_URL="${CC_ROCM_REPO_URL:-https://repo.radeon.com/rocm/apt/6.4.1}"
export CC_AMDGPU_REPO_URL="${CC_AMDGPU_REPO_URL:-https://repo.radeon.com/amdgpu/6.4.1/ubuntu}"
# The key that signs both: the path of an artifact of the image, pinned by SHA-256.
export CC_ROCM_KEY="${CC_ROCM_KEY:-}"
