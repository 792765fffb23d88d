# cc-debian12: Debian 12. Sorted before the debian element's 10-* file, whose
# own default then keeps this value.

export DIB_RELEASE="${DIB_RELEASE:-bookworm}"
