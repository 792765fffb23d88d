# Debian operating-system element: identity of the distribution.
# Sourced (not executed) under `set -eu` before every phase; only variables
# that are declared by the engine or by earlier environment.d files exist,
# so every read uses a ${VAR:-default} form.

export DISTRO_NAME=debian
export DIB_RELEASE="${DIB_RELEASE:-bookworm}"
export DIB_INIT_SYSTEM=systemd
export EFI_BOOT_DIR=EFI/debian
export DIB_DEBIAN_COMPONENTS="${DIB_DEBIAN_COMPONENTS:-main}"

# Package mirrors are configuration, never code: empty means "use what the
# manifest environment gives, else the build host's apt sources".
# DIB_DEBIAN_DISTRIBUTION_MIRROR is the upstream DIB spelling, kept as an alias.
export DIB_DISTRIBUTION_MIRROR="${DIB_DISTRIBUTION_MIRROR:-${DIB_DEBIAN_DISTRIBUTION_MIRROR:-}}"
export DIB_DEBIAN_SECURITY_MIRROR="${DIB_DEBIAN_SECURITY_MIRROR:-}"
export DIB_DEBIAN_SECURITY_SUBPATH="${DIB_DEBIAN_SECURITY_SUBPATH:-}"
