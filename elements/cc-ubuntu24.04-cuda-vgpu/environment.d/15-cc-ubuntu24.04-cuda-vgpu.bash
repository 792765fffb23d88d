# cc-ubuntu24.04-cuda-vgpu: child image layered on cc-ubuntu24.04, for KVM flavors with an
# NVIDIA vGPU. Sorted after the operating-system elements (10-*) and before cc-cuda (20-*).

export CC_CUDA_GENERATION=12
# The driver is NVIDIA's vGPU guest driver, whose branch must match the site's hypervisor:
# cc-cuda installs the toolkit only.
export CC_NVIDIA_DRIVER_FLAVOR=none

# The guest driver (a .run or .deb NVIDIA licenses to the site, so there is no public
# default): the artifact `vgpu-guest-driver` (CC_VGPU_DRIVER, set by ccb), or else its URL
# and SHA-256 in the image's env.
export CC_VGPU_DRIVER_URL="${CC_VGPU_DRIVER_URL:-}"
export CC_VGPU_DRIVER_SHA256="${CC_VGPU_DRIVER_SHA256:-}"
# The client configuration token of the site's license server: the path of a secret input
# (the manifests name where it is read from at build time; it is never part of a key).
export CC_VGPU_LICENSE_TOKEN="${CC_VGPU_LICENSE_TOKEN:-}"

if [ "${DISTRO_NAME:-}" != ubuntu ] || [ "${DIB_RELEASE:-}" != noble ]; then
    echo "cc-ubuntu24.04-cuda-vgpu: must be layered on cc-ubuntu24.04 (ubuntu noble); got DISTRO_NAME='${DISTRO_NAME:-}' DIB_RELEASE='${DIB_RELEASE:-}'" >&2
    exit 1
fi
