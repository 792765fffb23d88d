#!/usr/bin/env bash
# Seeds the `qcow2` fuzz target's corpus with small images made by QEMU, one per feature the
# reader has: v2, v3, deflate, zstd, extended L2, zero clusters, and backing files named so that
# the harness resolves them (`raw*` a raw disk, anything else the input itself).
set -euo pipefail
cd "$(dirname "$0")"
out=corpus/qcow2
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"

# 64 KiB of text, random bytes and a hole.
{ head -c 16384 < <(yes 'Package: cloud-init'); head -c 16384 /dev/urandom
  head -c 16384 /dev/zero; head -c 16384 < <(yes 'Status: install ok installed'); } > disk.raw

mk() { # name, qemu-img convert options...
    local name=$1; shift
    qemu-img convert -f raw -O qcow2 "$@" disk.raw "$name.qcow2"
}
mk v2 -o compat=0.10,cluster_size=512
mk v3 -o cluster_size=512
mk deflate -c -o cluster_size=512
mk zstd -c -o cluster_size=512,compression_type=zstd
mk v2-deflate -c -o compat=0.10,cluster_size=1k
mk extl2 -o extended_l2=on,cluster_size=16k
mk extl2-zstd -c -o extended_l2=on,cluster_size=16k,compression_type=zstd

# Overlays: over a raw disk, and over "themselves" (the harness returns the input).
qemu-img create -q -f qcow2 -o cluster_size=512 -b disk.raw -F raw raw-overlay.qcow2 96k
qemu-io -f qcow2 -c 'write -P 0xab 1k 2k' -c 'write -z 8k 4k' raw-overlay.qcow2 > /dev/null
qemu-img rebase -u -b raw.img -F raw raw-overlay.qcow2
qemu-img create -q -f qcow2 -o cluster_size=512 -b v3.qcow2 -F qcow2 self.qcow2
qemu-io -f qcow2 -c 'write -P 0xcd 3k 1k' -c 'write -z 20k 2k' self.qcow2 > /dev/null
qemu-img rebase -u -b self.qcow2 -F qcow2 self.qcow2
qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=16k -b disk.raw -F raw sub.qcow2
qemu-io -f qcow2 -c 'write -P 0xef 512 512' -c 'write -z 4k 1k' sub.qcow2 > /dev/null
qemu-img rebase -u -b raw.img -F raw sub.qcow2

for f in *.qcow2; do
    cp "$f" "$OLDPWD/$out/seed-$f"
done
ls -l "$OLDPWD/$out"

# The `initramfs` target: small archives as initramfs generators write them: each compression,
# the crc format, and an uncompressed early-microcode cpio before a compressed main archive.
# (Still in "$tmp": $OLDPWD is fuzz/.)
out=corpus/initramfs
mkdir -p "$OLDPWD/$out"
mkdir -p root/usr/lib/modules/6.1.0-1-amd64/kernel/drivers/nvme/host root/kernel/x86/microcode
printf '#!/bin/sh\n' > root/init
printf 'ELF' > root/usr/lib/modules/6.1.0-1-amd64/kernel/drivers/nvme/host/nvme.ko.zst
head -c 300 /dev/urandom > root/kernel/x86/microcode/GenuineIntel.bin
(cd root && find init usr | cpio --quiet -o -H newc) > main.cpio
(cd root && find init usr | cpio --quiet -o -H crc) > crc.cpio
(cd root && find kernel | cpio --quiet -o -H newc) > ucode.cpio
gzip -n -c main.cpio > main.gz
zstd -q -c main.cpio > main.zst
xz --check=crc32 --lzma2=dict=64KiB -c main.cpio > main.xz
lz4 -l -q -c main.cpio > main.lz4
for f in main.cpio crc.cpio main.gz main.zst main.xz main.lz4; do
    cp "$f" "$OLDPWD/$out/seed-$f"
    cat ucode.cpio "$f" > "$OLDPWD/$out/seed-ucode-$f"
done
ls -l "$OLDPWD/$out"
