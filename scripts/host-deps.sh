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
    mkfs.fat:dosfstools
    mcopy:mtools
    mkfs.xfs:xfsprogs
    xfs_db:xfsprogs
    mkfs.ext4:e2fsprogs
    debugfs:e2fsprogs
    # The inspect tests make partitioned disks without root: GPT and MBR tables.
    sgdisk:gdisk
    sfdisk:fdisk
    # The rpm database tests make packages and an SQLite rpmdb with the real rpm.
    rpm:rpm
    rpmbuild:rpm
    # Operators verify signed checksums with OpenSSH's ssh-keygen; the tests do too.
    ssh-keygen:openssh-client
    # The initramfs reader's tests pack archives with the tools initramfs generators use.
    cpio:cpio
    gzip:gzip
    zstd:zstd
    xz:xz-utils
    lz4:lz4
    # A real web server on 127.0.0.1: the remote cache (WebDAV) and the distribution bases'
    # fixture mirror.
    nginx:nginx
    # The remote builder tests run an sshd in a network namespace (a second "host").
    sshd:openssh-server
    ssh:openssh-client
)

ensure_host_tools() {
    local entry missing=()
    for entry in "${ccb_host_tools[@]}"; do
        if ! command -v "${entry%%:*}" >/dev/null 2>&1; then
            missing+=("${entry#*:}")
        fi
    done
    # The SBOM tests install the SPDX validator (spdx-tools) with pip into a venv.
    if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
        missing+=(python3-venv)
    fi
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

# QEMU for `ccb test` (boots) and qemu-img (conversions), with OVMF for UEFI. qemu-utils and
# qemu-system-x86 must come from the same release: a newer preinstalled qemu-utils (from
# backports) would make apt refuse qemu-system-x86, so qemu-utils is pinned to its version.
ensure_qemu() {
    if command -v qemu-system-x86_64 >/dev/null 2>&1 && command -v qemu-img >/dev/null 2>&1 \
        && [[ -e /usr/share/OVMF/OVMF_CODE.fd || -e /usr/share/OVMF/OVMF_CODE_4M.fd ]]; then
        return 0
    fi
    if [[ $(id -u) -ne 0 ]]; then
        echo "need root to install qemu-system-x86, qemu-utils and ovmf" >&2
        return 1
    fi
    apt-get update -q
    local v
    v=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ { print $2 }')
    echo "installing qemu-system-x86 and qemu-utils $v, ovmf" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --allow-downgrades \
        --no-install-recommends qemu-system-x86 "qemu-utils=$v" ovmf
}

# arm64 on an amd64 host: arm64 root filesystems are built under qemu-user, registered with
# binfmt_misc with the fix-binary flag (F, Debian's qemu-user-static default), so chroots run
# arm64 programs with no interpreter copied into them; mmdebstrap checks a foreign arch with
# arch-test. arm64 disks boot in qemu-system-aarch64 on AAVMF (UEFI); grub-common's
# grub-mkimage makes their GRUB image natively. binfmt_misc is mounted
# when it is not. Prints the command that would fix it when registration is impossible.
ensure_arm64_emulation() {
    if [[ $(uname -m) == aarch64 ]]; then
        return 0
    fi
    local pkgs=()
    command -v qemu-aarch64-static >/dev/null 2>&1 || pkgs+=(qemu-user-static)
    command -v update-binfmts >/dev/null 2>&1 || pkgs+=(binfmt-support)
    command -v arch-test >/dev/null 2>&1 || pkgs+=(arch-test)
    command -v qemu-system-aarch64 >/dev/null 2>&1 || pkgs+=(qemu-system-arm)
    [[ -e /usr/share/AAVMF/AAVMF_CODE.fd ]] || pkgs+=(qemu-efi-aarch64)
    # GRUB's arm64 boot image is made by the host's grub-mkimage from the image's own
    # modules (it only assembles them), not by the image's under emulation.
    command -v grub-mkimage >/dev/null 2>&1 || pkgs+=(grub-common)
    # Host tools in emulated chroots (src/action/native.rs): the host's programs are
    # patched to start from the engine directory; kmod's modinfo and depmod are among them.
    command -v patchelf >/dev/null 2>&1 || pkgs+=(patchelf)
    [[ -x /usr/bin/kmod ]] || pkgs+=(kmod)
    if ((${#pkgs[@]} > 0)); then
        if [[ $(id -u) -ne 0 ]]; then
            echo "arm64 emulation: need root to install ${pkgs[*]}" \
                "(apt-get install ${pkgs[*]})" >&2
            return 1
        fi
        echo "installing ${pkgs[*]}" >&2
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}"
    fi
    local binfmt=/proc/sys/fs/binfmt_misc
    if [[ ! -e $binfmt/register ]]; then
        if [[ $(id -u) -ne 0 ]] || ! mount -t binfmt_misc binfmt_misc "$binfmt" 2>/dev/null; then
            echo "arm64 emulation: binfmt_misc is not mounted; as root:" \
                "mount -t binfmt_misc binfmt_misc $binfmt && update-binfmts --enable qemu-aarch64" >&2
            return 1
        fi
    fi
    if [[ $(head -n 1 "$binfmt/qemu-aarch64" 2>/dev/null) != enabled ]]; then
        if [[ $(id -u) -ne 0 ]] || ! update-binfmts --enable qemu-aarch64 >/dev/null 2>&1; then
            echo "arm64 emulation: qemu-aarch64 is not registered; as root:" \
                "update-binfmts --enable qemu-aarch64" >&2
            return 1
        fi
    fi
    if ! grep -q '^flags:.*F' "$binfmt/qemu-aarch64"; then
        echo "arm64 emulation: qemu-aarch64 is registered without the fix-binary flag (F)," \
            "so chroots cannot find the interpreter; as root: update-binfmts --disable" \
            "qemu-aarch64 && update-binfmts --enable qemu-aarch64 (Debian's qemu-user-static" \
            "registers it with F)" >&2
        return 1
    fi
}
