# cc-cuda: CUDA toolkit and NVIDIA driver, selected by a CUDA generation.
# Image elements that pin a generation sort before this file (15-*).

export CC_CUDA_GENERATION="${CC_CUDA_GENERATION:-12}"

case "${CC_CUDA_GENERATION}" in
    12)
        export CC_CUDA_VERSION=12.6
        export CC_NVIDIA_DRIVER=560
        ;;
    11)
        export CC_CUDA_VERSION=11.4
        export CC_NVIDIA_DRIVER=470
        ;;
    *)
        echo "cc-cuda: unknown CC_CUDA_GENERATION '${CC_CUDA_GENERATION}' (supported: 11, 12)" >&2
        exit 1
        ;;
esac
# Which driver packages come from NVIDIA's repository: `proprietary` (cuda-drivers-<branch>),
# `open` (nvidia-open-<branch>, the open kernel modules, which Grace Hopper GH200 and newer
# GPUs require), or `none` (the toolkit only: the driver comes from elsewhere, e.g. NVIDIA's
# vGPU guest driver).
export CC_NVIDIA_DRIVER_FLAVOR="${CC_NVIDIA_DRIVER_FLAVOR:-proprietary}"
case "${CC_NVIDIA_DRIVER_FLAVOR}" in
    proprietary|open|none)
        ;;
    *)
        echo "cc-cuda: unknown CC_NVIDIA_DRIVER_FLAVOR '${CC_NVIDIA_DRIVER_FLAVOR}' (supported: proprietary, open, none)" >&2
        exit 1
        ;;
esac

# The version as NVIDIA's package names spell it (cuda-toolkit-12-6).
export CC_CUDA_PACKAGE_VERSION="${CC_CUDA_VERSION/./-}"

# NVIDIA's repository layout: <CC_CUDA_REPO_URL>/<distro>/<arch>/
case "${DISTRO_NAME:-}:${DIB_RELEASE:-}" in
    ubuntu:jammy)
        _cc_cuda_distro=ubuntu2204
        ;;
    ubuntu:noble)
        _cc_cuda_distro=ubuntu2404
        ;;
    debian:bookworm)
        _cc_cuda_distro=debian12
        ;;
    centos:9-stream|centos:9)
        _cc_cuda_distro=rhel9
        ;;
    *)
        _cc_cuda_distro=
        ;;
esac
export CC_CUDA_REPO_DISTRO="${CC_CUDA_REPO_DISTRO:-${_cc_cuda_distro}}"
unset _cc_cuda_distro

case "${ARCH:-}" in
    arm64|aarch64)
        export CC_CUDA_REPO_ARCH=sbsa
        ;;
    *)
        export CC_CUDA_REPO_ARCH=x86_64
        ;;
esac

# Base URL of NVIDIA's CUDA repositories (the directory holding <distro>/<arch>/): NVIDIA's
# public server by default, as upstream uses; point it at a mirror in the manifests.
export CC_CUDA_REPO_URL="${CC_CUDA_REPO_URL:-https://developer.download.nvidia.com/compute/cuda/repos}"

# NVIDIA's signing key, an artifact of the image pinned by SHA-256 (the path of the verified
# file): the keyring package on apt, the key file on dnf.
export CC_CUDA_KEYRING="${CC_CUDA_KEYRING:-}"
export CC_CUDA_KEY="${CC_CUDA_KEY:-}"
