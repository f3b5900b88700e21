#!/usr/bin/env bash
# `make test-cgroup2`: boot Debian's stock kernel with only cgroup v2
# (cgroup_no_v1=all) in qemu (TCG), run lambdalet itself inside (supervisor,
# sandbox, Python functions) and fail unless every check passes; then boot once
# more without cgroup_no_v1=all and expect the pure-v2 probe to notice.
# How it works and how long it takes: docs/cgroup2-vm.md.
#
# Needs root and Debian's package repositories (apt-get). Writes only under
# $VMTEST_CACHE (packages it downloads, the unpacked kernel) and $VMTEST_OUT
# (the initramfs and the serial logs of the last run); never touches the
# host's cgroups: qemu is an ordinary process.
#
# Environment:
#   LAMBDALET_BIN       the binary to test (default: target/release/lambdalet)
#   VMTEST_KERNEL_PKG   the Debian kernel package (default: the pin below)
#   VMTEST_CACHE        default /var/cache/lambdalet-vmtest
#   VMTEST_OUT          default ${CARGO_TARGET_DIR:-target}/vmtest
#   VMTEST_TIMEOUT      seconds per boot before qemu is killed (default 600)
#   VMTEST_CGROUP_OPTS  cgroup2 mount options in the guest
#                       (default nsdelegate,memory_recursiveprot: systemd's)
#   VMTEST_SKIP_NEGATIVE=1  skip the second (negative control) boot
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
# Pinned for reproducibility: this ABI is in both bookworm (12.x point release)
# and bookworm-security today, so it outlives a security update or two. When
# Debian drops it, the run falls back to what linux-image-amd64 depends on and
# says so; bump the pin then.
KERNEL_PKG=${VMTEST_KERNEL_PKG:-linux-image-6.1.0-50-amd64}
CACHE=${VMTEST_CACHE:-/var/cache/lambdalet-vmtest}
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
OUT=${VMTEST_OUT:-$TARGET/vmtest}
BIN=${LAMBDALET_BIN:-$TARGET/release/lambdalet}
TIMEOUT=${VMTEST_TIMEOUT:-600}
CGROUP_OPTS=${VMTEST_CGROUP_OPTS:-nsdelegate,memory_recursiveprot}
# Modules the guest needs to mount the host's root over virtio-9p; their
# dependencies are added from the modules' own `depends=` (see kernel_modules).
ROOT_MODULES=(virtio_pci 9pnet_virtio 9p)
# Every check the full boot must report as PASS (guest side: vmtest/init and
# vmtest/guest.sh). A check that is missing from the log counts as failed.
EXPECTED=(pure_v2 hostroot supervisor delegation hello limits memory_oom
  cpu_share forkbomb delete_cleanup subtree_confined supervisor_stop)

T0=$(date +%s.%N)
CLEANUP=()
trap 'rm -rf "${CLEANUP[@]}"' EXIT
log() { printf 'cgroup2-vm: %s\n' "$*"; }
die() { log "error: $*" >&2; exit 1; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}'; }

[ "$(id -u)" = 0 ] || die "run as root: it installs Debian packages (apt-get)"
[ -x "$BIN" ] || die "no lambdalet binary at $BIN (make build, or set LAMBDALET_BIN)"
BIN=$(readlink -f "$BIN")
case "$BIN$REPO" in *[[:space:]]*) die "paths with spaces are not supported: $BIN $REPO" ;; esac

# ------------------------------------------------------------------ packages
# qemu-system-x86 (the VM), busybox-static (the guest's whole userland before
# and around lambdalet), cpio (the initramfs). --no-install-recommends keeps
# qemu's install at ~10 s.
APT_UPDATED=
apt_update() { [ -n "$APT_UPDATED" ] || { apt-get update -q >/dev/null; APT_UPDATED=1; }; }
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
if ! [ -x /bin/busybox ] || ! /bin/busybox --list | grep -qx switch_root ||
   readelf -l "$(readlink -f /bin/busybox)" 2>/dev/null | grep -q 'program interpreter'; then
  need+=(busybox-static)
fi
command -v cpio >/dev/null || need+=(cpio)
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  apt_update
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi

# ------------------------------------------------------------------ kernel
# Only Debian's package is used, unpacked, never installed: /boot/vmlinuz and
# the few modules 9p needs, kept under $CACHE/kernels/PKG (~65 MB).
kernel_modules() { # DIR_WITH_lib/modules OUTDIR: copy ROOT_MODULES and deps in load order
  local tree=$1 dst=$2 order=() m
  declare -A seen=()
  visit() {
    local name=$1 f deps d
    [ -n "${seen[$name]:-}" ] && return 0
    seen[$name]=1
    f=$(find "$tree" \( -name "$name.ko*" -o -name "${name//_/-}.ko*" \) -print -quit)
    [ -n "$f" ] || die "module $name not in the kernel package"
    case $f in
      *.ko) cp "$f" "$dst/$name.ko" ;;
      *.ko.xz) xz -dc "$f" >"$dst/$name.ko" ;;
      *.ko.zst) zstd -qdc "$f" >"$dst/$name.ko" ;;
      *) die "unknown module format: $f" ;;
    esac
    # The .modinfo section holds "depends=a,b" (what depmod reads).
    deps=$(grep -a -o 'depends=[^[:cntrl:]]*' "$dst/$name.ko" | head -1 | cut -d= -f2 | tr , ' ')
    for d in $deps; do visit "$d"; done
    order+=("$name")
  }
  for m in "${ROOT_MODULES[@]}"; do visit "$m"; done
  printf '%s\n' "${order[@]}" >"$dst/load-order"
}

download() { # PKG DIR: fetch PKG's .deb into DIR (after an apt-get update if need be)
  # APT::Sandbox::User=root: the download dir is root's, not _apt's.
  (cd "$2" && apt-get download -q -o APT::Sandbox::User=root "$1" >/dev/null 2>&1) && return 0
  apt_update
  (cd "$2" && apt-get download -q -o APT::Sandbox::User=root "$1" >/dev/null 2>&1)
}

fetch_kernel() { # -> $CACHE/kernels/$KERNEL_PKG (complete, or not there at all)
  local dir=$CACHE/kernels/$KERNEL_PKG tmp deb alt
  [ -e "$dir/complete" ] && return 0
  tmp=$(mktemp -d "$CACHE/tmp.XXXXXX")
  CLEANUP+=("$tmp")
  if ! download "$KERNEL_PKG" "$tmp"; then
    alt=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    [ -n "$alt" ] || die "cannot download $KERNEL_PKG, and linux-image-amd64 does not resolve"
    log "WARNING: the pinned kernel $KERNEL_PKG cannot be downloaded any more; using $alt (update the pin in vmtest/run.sh)"
    KERNEL_PKG=$alt
    dir=$CACHE/kernels/$KERNEL_PKG
    [ -e "$dir/complete" ] && return 0
    download "$KERNEL_PKG" "$tmp" || die "cannot download $KERNEL_PKG"
  fi
  deb=$(ls "$tmp"/*.deb)
  mkdir -p "$tmp/x" "$tmp/k/modules"
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp/x" --wildcards './boot/vmlinuz-*' './lib/modules/*'
  cp "$tmp"/x/boot/vmlinuz-* "$tmp/k/vmlinuz"
  basename "$tmp"/x/lib/modules/* >"$tmp/k/release"
  dpkg-deb -f "$deb" Version >"$tmp/k/version"
  kernel_modules "$tmp/x/lib/modules" "$tmp/k/modules"
  # Under TCG, unpacking the XZ bzImage costs ~4 s of emulated CPU per boot;
  # qemu boots the ELF vmlinux directly through its PVH entry (CONFIG_PVH=y).
  # Same idea as the kernel's scripts/extract-vmlinux.
  "$PYTHON" - "$tmp/k" <<'PY' || rm -f "$tmp/k/vmlinux"
import lzma, sys
k = sys.argv[1]
d = open(k + "/vmlinuz", "rb").read()
i = d.find(b"\xfd7zXZ\x00")
if i < 0:
    sys.exit(0)  # not XZ: boot the bzImage itself
out = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(d[i:])
if out[:4] == b"\x7fELF":
    open(k + "/vmlinux", "wb").write(out)
PY
  # Keep one image: the vmlinux when there is one.
  [ -s "$tmp/k/vmlinux" ] && rm "$tmp/k/vmlinuz"
  touch "$tmp/k/complete"
  mkdir -p "$CACHE/kernels"
  rm -rf "$dir"
  mv "$tmp/k" "$dir"
  rm -rf "$tmp"
}

# The real interpreter, past pyenv's shim (lambdalet gets it as --python; the
# shim is a bash script that would cost ~1 s per start under TCG).
PYTHON=$(python3 -c 'import os, sys; print(os.path.realpath(sys.executable))') ||
  die "python3 is needed (the functions' runtime)"

mkdir -p "$CACHE"
t=$(date +%s.%N)
fetch_kernel
KDIR=$CACHE/kernels/$KERNEL_PKG
KERNEL=$KDIR/vmlinux
[ -s "$KERNEL" ] || KERNEL=$KDIR/vmlinuz
log "kernel $KERNEL_PKG $(cat "$KDIR/version") ($(basename "$KERNEL")); modules: $(tr '\n' ' ' <"$KDIR/modules/load-order")($(elapsed "$t") s)"

# ------------------------------------------------------------------ binary
# The guest runs the host's binary and interpreter from the host's root over
# 9p, so they must need nothing but files under the host's root: check that
# every shared library resolves (it is glibc only for lambdalet).
libs=$(ldd "$BIN" 2>&1) || true
if grep -q 'not found' <<<"$libs"; then die "$BIN: unresolved libraries: $libs"; fi
log "lambdalet $BIN links: $(awk '/=>/{print $1} /ld-linux/{print $1}' <<<"$libs" | sort -u | tr '\n' ' ')"

# ------------------------------------------------------------------ initramfs
# Only what runs before the host's root is mounted: static busybox, the
# modules, /init and its settings. Everything else comes from the host over 9p.
rm -rf "$OUT"
mkdir -p "$OUT/initramfs"/{bin,lib/modules,proc,sys,dev,mnt,newroot}
cp "$(readlink -f /bin/busybox)" "$OUT/initramfs/bin/busybox"
cp "$KDIR"/modules/*.ko "$KDIR/modules/load-order" "$OUT/initramfs/lib/modules/"
cp "$HERE/init" "$OUT/initramfs/init"
chmod 755 "$OUT/initramfs/init"
cat >"$OUT/initramfs/vmtest.conf" <<EOF
VMTEST_REPO=$REPO
VMTEST_BIN=$BIN
VMTEST_PYTHON=$PYTHON
VMTEST_CGROUP_OPTS=$CGROUP_OPTS
EOF
(cd "$OUT/initramfs" && find . -print0 | cpio --null -o -H newc --owner=0:0 --quiet) |
  gzip -1 >"$OUT/initramfs.cpio.gz"
rm -rf "$OUT/initramfs"

# ------------------------------------------------------------------ boot
# TCG: the hosts' KVM is kvm_pvm, which cannot run a stock kernel (see the
# doc). -cpu qemu64 is the fastest model under TCG. The host's root is shared
# read-only; multidevs=remap keeps inode numbers unique across host mounts.
boot() { # boot NAME APPEND-EXTRA: serial log in $OUT/NAME.log
  local name=$1 extra=$2 rc=0 t
  t=$(date +%s.%N)
  timeout --kill-after=10 "$TIMEOUT" qemu-system-x86_64 \
    -accel tcg -cpu qemu64 -smp 2 -m 2048M \
    -nographic -nic none -no-reboot -monitor none -serial stdio \
    -kernel "$KERNEL" -initrd "$OUT/initramfs.cpio.gz" \
    -append "console=ttyS0 panic=-1 quiet $extra" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    </dev/null >"$OUT/$name.log" 2>&1 || rc=$?
  tr -d '\r' <"$OUT/$name.log" >"$OUT/$name.log.tmp" && mv "$OUT/$name.log.tmp" "$OUT/$name.log"
  log "boot $name: qemu exit $rc after $(elapsed "$t") s (serial log $OUT/$name.log)"
  [ "$rc" = 124 ] || [ "$rc" = 137 ] && log "boot $name: TIMED OUT after $TIMEOUT s"
  return 0
}

pass=0 fail=0
result() { # result NAME PASS|FAIL DETAIL
  if [ "$2" = PASS ]; then pass=$((pass + 1)); else fail=$((fail + 1)); fi
  printf 'cgroup2-vm: %-18s %s  %s\n' "$1" "$2" "$3"
}

boot v2 "cgroup_no_v1=all vmtest_mode=full"
grep -a '^VMTEST-' "$OUT/v2.log" | grep -v '^VMTEST-RESULT' || true
for name in "${EXPECTED[@]}"; do
  line=$(grep -a "^VMTEST-RESULT $name " "$OUT/v2.log" | tail -1 || true)
  if [ -z "$line" ]; then result "$name" FAIL "not reported by the guest"; continue; fi
  read -r _ _ status detail <<<"$line"
  result "$name" "$status" "$detail"
done
# A check the guest reported that this list does not know is counted too.
while read -r _ name status detail; do
  printf '%s\n' "${EXPECTED[@]}" | grep -qx "$name" || result "$name" "$status" "$detail"
done < <(grep -a '^VMTEST-RESULT ' "$OUT/v2.log" || true)
grep -aq '^VMTEST-DONE ' "$OUT/v2.log" || result guest_done FAIL "no VMTEST-DONE line: the guest crashed or hung"

# The negative control: the same kernel and initramfs without cgroup_no_v1=all
# must be detected as not pure v2 (vmtest_mode=probe stops after the probe).
if [ "${VMTEST_SKIP_NEGATIVE:-}" != 1 ]; then
  boot hybrid "vmtest_mode=probe"
  line=$(grep -a '^VMTEST-RESULT pure_v2 ' "$OUT/hybrid.log" | tail -1 || true)
  case $line in
    "VMTEST-RESULT pure_v2 FAIL "*) result negative_control PASS "without cgroup_no_v1=all: ${line#VMTEST-RESULT pure_v2 FAIL }" ;;
    "") result negative_control FAIL "the probe boot reported nothing" ;;
    *) result negative_control FAIL "the probe did not notice v1: ${line#VMTEST-RESULT }" ;;
  esac
fi

if [ "$fail" != 0 ]; then
  log "--- guest console of the failing run ($OUT/v2.log), from the start of the test script:"
  sed -n '/^VMTEST-BEGIN/,$p' "$OUT/v2.log" | tail -n 200
fi
log "total $(elapsed "$T0") s"
echo "cgroup2-vm: $pass passed, $fail failed"
[ "$fail" = 0 ]
