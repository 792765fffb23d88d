# cc-debian13: Debian 13 (trixie). Sorted before the debian element's 10-* file, whose own
# default then keeps this value.

export DIB_RELEASE="${DIB_RELEASE:-trixie}"
