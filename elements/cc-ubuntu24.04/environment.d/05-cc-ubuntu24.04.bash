# cc-ubuntu24.04: Ubuntu 24.04 (noble). Sorted before the ubuntu element's 10-* file,
# whose own default then keeps this value.

export DIB_RELEASE="${DIB_RELEASE:-noble}"
