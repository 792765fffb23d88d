# cc-ubuntu22.04: Ubuntu 22.04 (jammy). Sorted before the ubuntu element's 10-* file,
# whose own default then keeps this value.

export DIB_RELEASE="${DIB_RELEASE:-jammy}"
