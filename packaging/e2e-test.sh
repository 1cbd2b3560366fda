#!/usr/bin/env bash
# End-to-end test of the Debian package in a booted systemd container.
#
#   packaging/e2e-test.sh [--suite bookworm|trixie|all]... [--phase NAME]... [--deb FILE] [--refresh] [--list]
#
# For each suite (default: bookworm and trixie) it unpacks a minimal Debian root made by debootstrap
# (cached in /var/cache/aiotask-e2e/SUITE.tar; --refresh makes it anew), boots it with systemd-nspawn,
# installs the .deb (default: dist/aiotask_0.1.0-1_amd64.deb, built with packaging/build-deb.sh when
# missing) with apt-get, then runs the phases of packaging/e2e/phases/ in the order of their names:
# socket activation, the CLI, the STATUS line, the journal, reload under load, crash handling, restart,
# draining, upgrade and purge. --phase NAME (the file's name without its number and .sh, e.g. chaos;
# repeatable) runs only those phases after the installation; each sets up what it needs. --list prints the
# phases. Every wait is bounded. It prints a PASS or FAIL line per check and the time of each phase, always
# tears the container down, and exits non-zero when a check failed. Needs root; installs debootstrap,
# systemd-container and jq when missing. The container shares the host's network, to fetch the package's
# dependencies from Debian's mirrors. Helpers: packaging/e2e/lib.sh; a new phase is one new file.
set -uo pipefail

cd "$(dirname "$0")/.."
REPO=$PWD
E2E=$REPO/packaging/e2e
CACHE=${AIOTASK_E2E_CACHE:-/var/cache/aiotask-e2e}
MIRROR=${AIOTASK_E2E_MIRROR:-http://deb.debian.org/debian}
DEB=
SUITES=()
ONLY=()
REFRESH=0

# phase_name FILE: 40-chaos.sh -> chaos.
phase_name() { local name; name=$(basename "$1" .sh); echo "${name#[0-9]*-}"; }
PHASE_FILES=("$E2E"/phases/[0-9]*.sh)

while [ $# -gt 0 ]; do
    case "$1" in
        --suite) SUITES+=("$2"); shift 2 ;;
        --suite=*) SUITES+=("${1#--suite=}"); shift ;;
        --phase) ONLY+=("$2"); shift 2 ;;
        --phase=*) ONLY+=("${1#--phase=}"); shift ;;
        --deb) DEB=$2; shift 2 ;;
        --deb=*) DEB=${1#--deb=}; shift ;;
        --refresh) REFRESH=1; shift ;;
        --list) for f in "${PHASE_FILES[@]}"; do phase_name "$f"; done; exit 0 ;;
        -h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
[ ${#SUITES[@]} -gt 0 ] || SUITES=(bookworm trixie)
[ "${SUITES[0]}" = all ] && SUITES=(bookworm trixie)
for suite in "${SUITES[@]}"; do
    case "$suite" in bookworm | trixie) ;; *) echo "unsupported suite: $suite" >&2; exit 2 ;; esac
done
if [ ${#ONLY[@]} -gt 0 ]; then
    selected=()
    for name in "${ONLY[@]}"; do
        found=
        for f in "${PHASE_FILES[@]}"; do
            if [ "$(phase_name "$f")" = "$name" ] || [ "$(basename "$f" .sh)" = "$name" ]; then found=$f; fi
        done
        [ -n "$found" ] || { echo "unknown phase: $name (phases: $(for f in "${PHASE_FILES[@]}"; do phase_name "$f"; done | tr '\n' ' '))" >&2; exit 2; }
        selected+=("$found")
    done
    PHASE_FILES=("${selected[@]}")
fi
[ "$(id -u)" -eq 0 ] || { echo "error: run as root (debootstrap, systemd-nspawn, nsenter)" >&2; exit 2; }

# shellcheck source=e2e/lib.sh
. "$E2E/lib.sh"

# ---------------------------------------------------------------------------------------------------
# Host tools, the package

SUITE=host
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v jq >/dev/null || need+=(jq)
if [ ${#need[@]} -gt 0 ]; then
    echo "==> installing ${need[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null ||
        { echo "error: cannot install ${need[*]}" >&2; exit 2; }
fi
if [ -z "$DEB" ]; then
    DEB=$REPO/dist/aiotask_0.1.0-1_$(dpkg --print-architecture).deb
    if [ ! -f "$DEB" ]; then
        echo "==> $DEB is missing: building it"
        "$REPO/packaging/build-deb.sh" || { echo "error: packaging/build-deb.sh failed" >&2; exit 2; }
    fi
fi
[ -f "$DEB" ] || { echo "error: no package at $DEB" >&2; exit 2; }
DEB=$(readlink -f "$DEB")

trap teardown EXIT
trap 'echo "interrupted"; exit 130' INT TERM

# ---------------------------------------------------------------------------------------------------
# Each suite: the root, the boot and the installation, then the phases

install_package() {
    local out rc
    out=$(sh_ct 'cd /root && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q ./aiotask_*.deb' 2>&1)
    rc=$?
    printf '%s\n' "$out" | grep -E '^(Setting up|Unpacking|Get:)' | sed 's/^/      /'
    check "apt-get install -y ./$(basename "$DEB")" [ $rc -eq 0 ] || { printf '%s\n' "$out" | tail -n 20; return 1; }
    check "postinst created the system group aiotask" sh_ct 'getent group aiotask >/dev/null'
    check "aiotask.socket is enabled" [ "$(in_ct systemctl is-enabled aiotask.socket)" = enabled ]
    check "aiotask.socket is active" is_active aiotask.socket
    check "aiotask.service is not started by the installation" is_not_running
    check "socket /run/aiotask/aiotask.sock is root:aiotask 0660" \
        [ "$(in_ct stat -c '%U:%G %a' /run/aiotask/aiotask.sock)" = "root:aiotask 660" ]
    check "conffile /etc/aiotask/aiotaskd.conf is registered" \
        sh_ct "dpkg-query -W -f='\${Conffiles}' aiotask | grep -q /etc/aiotask/aiotaskd.conf"
    # The packaged (release) binaries: --help once crashed on a failed cast, --version was unknown to aiotask.
    check "aiotaskd --help exits 0 with its usage" sh_ct 'out=$(aiotaskd --help) && echo "$out" | grep -q "^USAGE: aiotaskd"'
    check "aiotask --version exits 0 with the package's upstream version" \
        sh_ct 'v=$(dpkg-query -W -f="\${Version}" aiotask) && [ "$(aiotask --version)" = "${v%%-*}" ]'
}

# run_phase FILE: runs one phase in this shell. A phase declares its variables `local` (a few common ones are
# here). Fails when the phase called stop_suite; a phase whose last check failed goes on to the next phase.
run_phase() {
    local out rc main t0 n pid client count failures
    SUITE_STOPPED=0
    # shellcheck source=/dev/null
    . "$1"
    [ "$SUITE_STOPPED" = 0 ]
}

run_suite() {
    local file
    phase "debootstrap cache"
    check "minimal $SUITE root with systemd (cached in $CACHE/$SUITE.tar)" ensure_cache || return 1

    phase "boot container"
    check "container boots: systemctl is-system-running is running or degraded" boot || return 1

    phase "apt-get install ./aiotask.deb"
    install_package || return 1

    for file in "${PHASE_FILES[@]}"; do
        run_phase "$file" || return 1
    done

    phase "teardown"
    teardown
    end_phase
}

TOTAL_START=$(now)
for SUITE in "${SUITES[@]}"; do
    SUITE_START=$(now)
    FAILED_BEFORE=$FAILED
    run_suite || fail "suite stopped early"
    teardown
    end_phase
    TIMINGS+=("$(printf '%-9s %-44s %7ss' "$SUITE" "total" "$(elapsed "$SUITE_START")")")
    [ "$FAILED" -eq "$FAILED_BEFORE" ] && echo "==== [$SUITE] all checks passed" || echo "==== [$SUITE] $((FAILED - FAILED_BEFORE)) checks failed"
done
SUITE=all
echo
echo "Phase timings:"
printf '  %s\n' "${TIMINGS[@]}"
echo "Total: $(elapsed "$TOTAL_START") s"
echo "e2e: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
