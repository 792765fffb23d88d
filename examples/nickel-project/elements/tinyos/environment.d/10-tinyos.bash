# tinyos: the identity of the distribution. Sourced under `set -eu`, so every
# variable that may be unset is read with a default.

export DISTRO_NAME=debian
export DIB_RELEASE="${DIB_RELEASE:-bookworm}"
export DIB_INIT_SYSTEM=systemd
