# base: switches for the baseline system update and packages.

export DIB_AVOID_PACKAGES_UPDATE="${DIB_AVOID_PACKAGES_UPDATE:-0}"
export DIB_SKIP_BASE_PACKAGE_INSTALL="${DIB_SKIP_BASE_PACKAGE_INSTALL:-0}"
