# cc-ubuntu22.04-cuda: child image layered on cc-ubuntu22.04, which brings the
# operating-system element. Sorted after the operating-system elements (10-*)
# and before cc-cuda (20-*).

# The CUDA 12 image (its published name says CUDA): the generation is fixed, not a default.
export CC_CUDA_GENERATION=12

if [ "${DISTRO_NAME:-}" != ubuntu ] || [ "${DIB_RELEASE:-}" != jammy ]; then
    echo "cc-ubuntu22.04-cuda: must be layered on cc-ubuntu22.04 (ubuntu jammy); got DISTRO_NAME='${DISTRO_NAME:-}' DIB_RELEASE='${DIB_RELEASE:-}'" >&2
    exit 1
fi
