#!/usr/bin/env bash
# Builds dist/aiotask_0.1.0-1_amd64.deb from a checkout and checks it with lintian.
#
#   packaging/build-deb.sh
#
# Needs the Swift toolchain on the PATH (it is not a Debian package; /opt/swift/usr/bin is added
# when present) and root or sudo for apt-get when build dependencies are missing. The release
# binaries are built in .build-release (reused by later runs); the Debian build itself runs in a
# copy of the tree, so the checkout gets no debian/ directory and no build leftovers.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
[ -d /opt/swift/usr/bin ] && export PATH="/opt/swift/usr/bin:$PATH"
SCRATCH=${AIOTASK_SCRATCH:-$ROOT/.build-release}
DIST=$ROOT/dist

log() { printf '==> %s\n' "$*"; }
now() { date +%s; }
T0=$(now)

# 1. Build dependencies.
need=()
for pkg in debhelper dpkg-dev lintian libsystemd-dev libssl-dev pkg-config fakeroot; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
command -v swift >/dev/null || { echo "error: swift is not on the PATH (the Swift toolchain is not a Debian package)" >&2; exit 2; }

# 2. Release binaries, with the Swift runtime linked in statically (scripts/build-release: the same build
# scripts/bench-smoke measures, so that CI builds it once).
log "swift build -c release (scratch path ${SCRATCH#"$ROOT"/})"
BINDIR=$(AIOTASK_SCRATCH=$SCRATCH scripts/build-release)
T1=$(now)

# 3. The Debian build, in a copy of the tree with packaging/debian as debian/.
WORK=$(mktemp -d /tmp/aiotask-deb.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
SRC=$WORK/aiotask-0.1.0
mkdir -p "$SRC"
tar -C "$ROOT" --exclude='./.build*' --exclude=./dist --exclude=./.git --exclude='./Examples/*/.build*' \
    -cf - . | tar -C "$SRC" -xf -
rm -rf "$SRC/debian"
cp -a packaging/debian "$SRC/debian"
mkdir -p "$SRC/.build-release/release"
cp "$BINDIR/aiotaskd" "$BINDIR/aiotask" "$SRC/.build-release/release/"
log "dpkg-buildpackage -b"
(cd "$SRC" && dpkg-buildpackage -b -us -uc) > "$WORK/build.log" 2>&1 || {
    tail -n 60 "$WORK/build.log" >&2
    echo "error: dpkg-buildpackage failed (log above)" >&2
    exit 1
}
mkdir -p "$DIST"
ARCH=$(dpkg-architecture -qDEB_HOST_ARCH)
DEB=aiotask_0.1.0-1_${ARCH}.deb
cp "$WORK/$DEB" "$DIST/$DEB"
T2=$(now)

# 4. lintian: no errors and no warnings (overrides are in packaging/debian/*lintian-overrides).
log "lintian dist/$DEB"
lintian --fail-on error,warning --info --display-info "$DIST/$DEB" "$WORK"/aiotask_0.1.0-1_"${ARCH}".changes
T3=$(now)

log "dist/$DEB ($(du -h "$DIST/$DEB" | cut -f1)): swift build $((T1 - T0)) s, dpkg-buildpackage $((T2 - T1)) s, lintian $((T3 - T2)) s"
dpkg-deb --info "$DIST/$DEB" | sed -n 's/^ \(Depends\|Version\|Installed-Size\):/  \1:/p'
