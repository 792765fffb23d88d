# Sourced by scripts/ccb and scripts/test: installs the host tools ccb's builds and tests use
# when they are missing (Debian/Ubuntu hosts, as root). Each entry is "command:package".
ccb_host_tools=(
    bash:bash
    gcc:gcc
    git:git
    curl:curl
    mmdebstrap:mmdebstrap
    unsquashfs:squashfs-tools
    mksquashfs:squashfs-tools
)

ensure_host_tools() {
    local entry missing=()
    for entry in "${ccb_host_tools[@]}"; do
        if ! command -v "${entry%%:*}" >/dev/null 2>&1; then
            missing+=("${entry#*:}")
        fi
    done
    if ((${#missing[@]} == 0)); then
        return 0
    fi
    # Unique package names, in order.
    local -A seen=()
    local pkgs=() p
    for p in "${missing[@]}"; do
        if [[ -z "${seen[$p]:-}" ]]; then
            seen[$p]=1
            pkgs+=("$p")
        fi
    done
    echo "installing ${pkgs[*]}" >&2
    if [[ $(id -u) -ne 0 ]]; then
        echo "need root to install packages (and to build images)" >&2
        return 1
    fi
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}"
}
