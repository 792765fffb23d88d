# manifests: where build manifests live inside the image and next to the output.

export DIB_MANIFEST_IMAGE_DIR="${DIB_MANIFEST_IMAGE_DIR:-/etc/dib-manifests}"
export DIB_MANIFEST_SAVE_DIR="${DIB_MANIFEST_SAVE_DIR:-}"
