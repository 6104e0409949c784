#!/usr/bin/env bash
# An emulated Raspberry Pi OS userland: Debian 12 (Bookworm, Python 3.11, as Pi OS) for arm64
# (Pi 4/5, 64-bit) or armhf (32-bit), run under qemu-user-static. Needs root.
#
#   devices/emulate.sh build ARCH               build the root filesystem, or unpack it from cache
#   devices/emulate.sh run ARCH COMMAND...      run COMMAND inside it (bash -c), /proc /sys /dev mounted
#   devices/emulate.sh clean ARCH               remove the unpacked root filesystem (cache kept)
#   devices/emulate.sh path ARCH                print where the unpacked root filesystem is
#
# Root filesystems live in $EDGECONV_PI_CACHE (default $EDGECONV_CACHE/pi, else
# ~/.cache/edgeconv/pi): ARCH/ unpacked, ARCH-<hash>.tar.gz cached, keyed by the package list,
# so a warm build is an unpack; ARCH-pip/ is the guest's pip cache. Builds of one ARCH wait for
# each other (flock), so one can start early in the background. EDGECONV_PI_NAME=NAME keeps a
# second root filesystem of ARCH in NAME/, to run two emulated Pis of one ARCH at once. The
# Debian mirror is the one apt already uses here. Two traps of Debian 12's qemu 7.2 are handled:
# the guest would see this machine's x86 /proc/cpuinfo (on which LiteRT and ONNX Runtime crash),
# so a Pi's cpuinfo is bind-mounted over it; and the default "max" CPU gives wrong XNNPACK int8
# results, so QEMU_CPU names the Pi's core. Emulation shows correctness, never speed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${EDGECONV_PI_CACHE:-${EDGECONV_CACHE:-$HOME/.cache/edgeconv}/pi}"
packages="python3,python3-venv,python3-pip,ca-certificates,openssh-server,rsync,sudo,procps"

die() { printf 'emulate: error: %s\n' "$*" >&2; exit 1; }
say() { printf 'emulate: %s\n' "$*" >&2; }

[ $# -ge 2 ] || { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
action="$1" arch="$2"
shift 2
case "$arch" in
  arm64) qemu=aarch64 cpu=cortex-a72 ;;
  armhf) qemu=arm cpu=cortex-a15 packages="$packages,python3-numpy,python3-pil" ;;
  *) die "ARCH is arm64 or armhf, not '$arch'" ;;
esac
[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot and mounts)"
root="$cache/${EDGECONV_PI_NAME:-$arch}"
key="$(printf '%s %s bookworm' "$arch" "$packages" | sha256sum | cut -c1-12)"
tarball="$cache/$arch-$key.tar.gz"

mirror() {  # the Debian mirror apt uses on this machine
  local found
  found="$(grep -hoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' \
           /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
           | head -1 | awk '{print $2}')"
  echo "${found:-http://deb.debian.org/debian}"
}

binfmt() {  # qemu-user-static registered for the guest's binaries
  # Two builds (arm64 and armhf, as CI starts them) may get here at once: one mounts, the
  # other waits on the lock and finds it mounted.
  exec {binfmt_lock}>/tmp/edgeconv-binfmt.lock
  flock "$binfmt_lock"
  [ -e /proc/sys/fs/binfmt_misc/register ] ||
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  if [ ! -e "/proc/sys/fs/binfmt_misc/qemu-$qemu" ]; then
    command -v update-binfmts >/dev/null || die "apt-get install qemu-user-static binfmt-support"
    update-binfmts --enable "qemu-$qemu" >/dev/null 2>&1 || true
  fi
  [ -e "/proc/sys/fs/binfmt_misc/qemu-$qemu" ] ||
    die "qemu-$qemu is not registered with binfmt_misc (apt-get install qemu-user-static)"
  exec {binfmt_lock}>&-
}

mounted=()
unmount_all() {  # always, before anything removes the root filesystem: /sys and /dev are binds
  local index
  for ((index = ${#mounted[@]} - 1; index >= 0; index--)); do
    umount -l "${mounted[$index]}" 2>/dev/null || true
  done
  mounted=()
}
trap unmount_all EXIT INT TERM

mount_guest() {
  mount -t proc proc "$root/proc" && mounted+=("$root/proc")
  mount --rbind /sys "$root/sys" && mount --make-rslave "$root/sys" && mounted+=("$root/sys")
  mount --rbind /dev "$root/dev" && mount --make-rslave "$root/dev" && mounted+=("$root/dev")
  mount --bind "$here/emulate/cpuinfo-$arch" "$root/proc/cpuinfo" &&
    mounted+=("$root/proc/cpuinfo")
  mkdir -p "$cache/$arch-pip" "$root/root/.cache/pip"
  mount --bind "$cache/$arch-pip" "$root/root/.cache/pip" && mounted+=("$root/root/.cache/pip")
  cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
  # The guest trusts what this machine trusts (a TLS-inspecting proxy's CA, for instance).
  if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    mkdir -p "$root/etc/ssl/certs" && touch "$root/etc/ssl/certs/ca-certificates.crt"
    mount --bind /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt" &&
      mounted+=("$root/etc/ssl/certs/ca-certificates.crt")
  fi
}

locked() {  # one build or clean of an ARCH at a time: a background build may be running
  mkdir -p "$cache"
  exec 9> "$cache/$arch.lock"
  flock 9
  "$@"
  exec 9>&-
}

build() {
  binfmt
  locked unpack_or_bootstrap
}

unpack_or_bootstrap() {
  if [ -x "$root/usr/bin/python3" ] && [ "$(cat "$root/.edgeconv-key" 2>/dev/null)" = "$key" ]; then
    say "$arch root filesystem ready at $root"
    return
  fi
  if [ -f "$tarball" ]; then
    say "unpacking $tarball"
    rm -rf "$root" && mkdir -p "$root"
    tar -xzf "$tarball" -C "$root" && echo "$key" > "$root/.edgeconv-key"
    return
  fi
  local started=$SECONDS staging="$root.partial"
  rm -rf "$staging"
  say "debootstrap $arch bookworm from $(mirror) (a few minutes)"
  debootstrap --arch="$arch" --variant=minbase --include="$packages" bookworm "$staging" \
    "$(mirror)" > "$cache/$arch-debootstrap.log" 2>&1 ||
    die "debootstrap failed; see $cache/$arch-debootstrap.log"
  echo "$key" > "$staging/.edgeconv-key"
  rm -rf "$root" && mv "$staging" "$root"
  tar -czf "$tarball.partial" -C "$root" . && mv "$tarball.partial" "$tarball"
  say "$arch built in $((SECONDS - started)) s, cached as $tarball"
}

case "$action" in
  build) build ;;
  run)
    [ $# -gt 0 ] || die "run needs a COMMAND"
    build
    mount_guest
    QEMU_CPU="$cpu" chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/sbin:/usr/bin:/sbin:/bin \
      LANG=C.UTF-8 QEMU_CPU="$cpu" PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
      SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
      PIP_DEFAULT_TIMEOUT=180 /bin/bash -c "$*"
    ;;
  clean) unmount_all; locked rm -rf "$root" ;;
  path) echo "$root" ;;
  *) die "unknown action '$action' (build, run, clean)" ;;
esac
