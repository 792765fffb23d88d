# cc-centos9-stream-cuda: child image layered on cc-centos9-stream, which brings the
# operating-system element. Sorted after the operating-system elements (10-*)
# and before cc-cuda (20-*).

# The CUDA 12 image (its published name says CUDA): the generation is fixed, not a default.
export CC_CUDA_GENERATION=12

if [ "${DISTRO_NAME:-}" != centos ] || [ "${DIB_RELEASE:-}" != 9-stream ]; then
    echo "cc-centos9-stream-cuda: must be layered on cc-centos9-stream (centos 9-stream); got DISTRO_NAME='${DISTRO_NAME:-}' DIB_RELEASE='${DIB_RELEASE:-}'" >&2
    exit 1
fi
