# cc-ubuntu20.04: Ubuntu 20.04 (focal). Sorted before the ubuntu element's 10-* file,
# whose own default then keeps this value.

export DIB_RELEASE="${DIB_RELEASE:-focal}"
