#!/usr/bin/env bash
# End-to-end test of the Debian package in a booted systemd container.
#
#   packaging/e2e-test.sh [--suite bookworm|trixie|all]... [--deb FILE] [--refresh]
#
# For each suite (default: bookworm and trixie) it unpacks a minimal Debian root made by debootstrap
# (cached in /var/cache/aiotask-e2e/SUITE.tar; --refresh makes it anew), boots it with systemd-nspawn,
# installs the .deb (default: dist/aiotask_0.1.0-1_amd64.deb, built with packaging/build-deb.sh when
# missing) with apt-get, and checks socket activation, the CLI, the STATUS line, the journal, reload
# under load, crash handling, restart, draining, upgrade and purge. Every wait is bounded. It prints a
# PASS or FAIL line per check and the time of each phase, always tears the container down, and exits
# non-zero when a check failed. Needs root; installs debootstrap and systemd-container when missing.
# The container shares the host's network, to fetch the package's dependencies from Debian's mirrors.
set -uo pipefail

cd "$(dirname "$0")/.."
REPO=$PWD
CACHE=${AIOTASK_E2E_CACHE:-/var/cache/aiotask-e2e}
MIRROR=${AIOTASK_E2E_MIRROR:-http://deb.debian.org/debian}
DEB=
SUITES=()
REFRESH=0

while [ $# -gt 0 ]; do
    case "$1" in
        --suite) SUITES+=("$2"); shift 2 ;;
        --suite=*) SUITES+=("${1#--suite=}"); shift ;;
        --deb) DEB=$2; shift 2 ;;
        --deb=*) DEB=${1#--deb=}; shift ;;
        --refresh) REFRESH=1; shift ;;
        -h | --help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
[ ${#SUITES[@]} -gt 0 ] || SUITES=(bookworm trixie)
[ "${SUITES[0]}" = all ] && SUITES=(bookworm trixie)
for suite in "${SUITES[@]}"; do
    case "$suite" in bookworm | trixie) ;; *) echo "unsupported suite: $suite" >&2; exit 2 ;; esac
done
[ "$(id -u)" -eq 0 ] || { echo "error: run as root (debootstrap, systemd-nspawn, nsenter)" >&2; exit 2; }

# ---------------------------------------------------------------------------------------------------
# Output and timing

FAILED=0
PASSED=0
TIMINGS=()

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
pass() { PASSED=$((PASSED + 1)); printf 'PASS  [%s] %s\n' "$SUITE" "$*"; }
fail() { FAILED=$((FAILED + 1)); printf 'FAIL  [%s] %s\n' "$SUITE" "$*"; }
info() { printf '      [%s] %s\n' "$SUITE" "$*"; }
# check DESCRIPTION COMMAND...: PASS when the command succeeds.
check() {
    local what=$1; shift
    if "$@"; then pass "$what"; else fail "$what"; return 1; fi
}
PHASE=
PHASE_START=
phase() {
    end_phase
    PHASE=$1
    PHASE_START=$(now)
    printf -- '---- [%s] %s\n' "$SUITE" "$PHASE"
}
end_phase() {
    if [ -n "$PHASE" ]; then
        TIMINGS+=("$(printf '%-9s %-44s %7ss' "$SUITE" "$PHASE" "$(elapsed "$PHASE_START")")")
    fi
    PHASE=
}

# ---------------------------------------------------------------------------------------------------
# Host tools, the package, the cached root

SUITE=host
need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
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

# ---------------------------------------------------------------------------------------------------
# The container

WORKDIR=
ROOTDIR=
NSPAWN_PID=
CPID=
BACKGROUND=()

# in_ct COMMAND...: runs a command inside the container, with a clean environment.
in_ct() {
    nsenter -t "$CPID" -a -- /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        TERM=dumb SYSTEMD_PAGER= "$@"
}
# sh_ct SCRIPT: runs a shell script inside the container.
sh_ct() { in_ct /bin/sh -c "$1"; }

# wait_until SECONDS COMMAND...: polls the command every 0.2 s until it succeeds; fails after SECONDS.
wait_until() {
    local limit=$1; shift
    local deadline
    deadline=$(awk -v n="$(now)" -v l="$limit" 'BEGIN { printf "%.3f", n + l }')
    while :; do
        "$@" >/dev/null 2>&1 && return 0
        awk -v n="$(now)" -v d="$deadline" 'BEGIN { exit !(n > d) }' && return 1
        sleep 0.2
    done
}

ensure_cache() {
    local tar=$CACHE/$SUITE.tar
    if [ "$REFRESH" = 1 ] || [ ! -s "$tar" ]; then
        info "debootstrap $SUITE into $tar (once; reused by later runs)"
        mkdir -p "$CACHE"
        local tmp=$CACHE/root-$SUITE.tmp
        rm -rf "$tmp"
        if ! debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus "$SUITE" "$tmp" "$MIRROR" \
            >"$CACHE/debootstrap-$SUITE.log" 2>&1; then
            tail -n 20 "$CACHE/debootstrap-$SUITE.log"
            rm -rf "$tmp"
            return 1
        fi
        tar -C "$tmp" -cf "$tar.tmp" . && mv "$tar.tmp" "$tar"
        rm -rf "$tmp"
    fi
}

# The init process of the container: the descendant of systemd-nspawn that is pid 1 in its namespace.
find_init() {
    local queue=("$NSPAWN_PID") pid child
    while [ ${#queue[@]} -gt 0 ]; do
        pid=${queue[0]}; queue=("${queue[@]:1}")
        for child in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
            if awk '/^NSpid:/ { exit !($NF == 1 && NF > 2) }' /proc/"$child"/status 2>/dev/null; then
                echo "$child"; return 0
            fi
            queue+=("$child")
        done
    done
    return 1
}

teardown() {
    local pid
    for pid in "${BACKGROUND[@]}"; do kill "$pid" 2>/dev/null; done
    BACKGROUND=()
    if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
        [ -n "$CPID" ] && in_ct systemctl poweroff >/dev/null 2>&1
        for _ in $(seq 1 100); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$NSPAWN_PID" 2>/dev/null; then
            kill -TERM "$NSPAWN_PID" 2>/dev/null
            for _ in $(seq 1 50); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.2; done
            kill -KILL "$NSPAWN_PID" 2>/dev/null
        fi
        wait "$NSPAWN_PID" 2>/dev/null
    fi
    NSPAWN_PID=
    CPID=
    if [ -n "$WORKDIR" ] && [ -d "$WORKDIR" ]; then
        # systemd-nspawn mounts in its own namespace: nothing is left mounted under the root.
        if ! grep -q " ${WORKDIR%/}/" /proc/self/mounts; then rm -rf "$WORKDIR"; fi
    fi
    WORKDIR=
    ROOTDIR=
}
trap teardown EXIT
trap 'echo "interrupted"; exit 130' INT TERM

boot() {
    WORKDIR=$(mktemp -d /var/tmp/aiotask-e2e-"$SUITE".XXXXXX)
    ROOTDIR=$WORKDIR/root
    mkdir "$ROOTDIR"
    tar -C "$ROOTDIR" -xf "$CACHE/$SUITE.tar" || return 1
    echo "aiotask-e2e" >"$ROOTDIR/etc/hostname"
    cp "$DEB" "$ROOTDIR/root/"
    systemd-nspawn -D "$ROOTDIR" --register=no --keep-unit -b -M "aiotask-e2e-$SUITE" --console=pipe \
        </dev/null >"$WORKDIR/console.log" 2>&1 &
    NSPAWN_PID=$!
    wait_until 30 find_init || { info "no init process; console:"; tail -n 20 "$WORKDIR/console.log"; return 1; }
    CPID=$(find_init)
    local state
    wait_until 90 sh -c "state=\$(nsenter -t $CPID -a systemctl is-system-running 2>/dev/null);
        [ \"\$state\" = running ] || [ \"\$state\" = degraded ]"
    state=$(in_ct systemctl is-system-running 2>/dev/null)
    info "systemd $(in_ct systemctl --version | awk 'NR == 1 { print $2 }'): $state"
    if [ "$state" = degraded ]; then info "failed units: $(in_ct systemctl --failed --plain --no-legend | awk '{ print $1 }' | tr '\n' ' ')"; fi
    [ "$state" = running ] || [ "$state" = degraded ]
}

# ---------------------------------------------------------------------------------------------------
# Checks inside the container

service_prop() { in_ct systemctl show -P "$1" "${2:-aiotask.service}"; }
is_active() { [ "$(in_ct systemctl is-active "$1")" = active ]; }
is_not_running() { ! is_active aiotask.service; }
status_line_is_live() { service_prop StatusText | grep -q '^Workers: '; }
set_config() { sh_ct "sed -i -E 's|^#?[[:space:]]*$1[[:space:]]*=.*|$1 = $2|' /etc/aiotask/aiotaskd.conf"; }
# reload_and_wait: systemctl reload returns once READY=1 follows RELOADING=1; the STATUS line is back then.
reload_and_wait() { in_ct systemctl reload aiotask && wait_until 20 status_line_is_live; }
submit_is() {
    local expected=$1; shift
    local out
    out=$(in_ct aiotask submit "$@" 2>&1) && [ "$out" = "$expected" ] || { info "aiotask submit $*: $out"; return 1; }
}
main_pid() {
    local pid
    pid=$(service_prop MainPID)
    [[ "$pid" =~ ^[0-9]+$ ]] && [ "$pid" -gt 1 ] && echo "$pid"
}
pool_pids() { local main; main=$(main_pid) && in_ct pgrep -P "$main" | sort; }
pool_size_is() { [ "$(pool_pids | wc -l)" -eq "$1" ]; }
# submitted_count: the daemon's count of tasks submitted so far.
submitted_count() { in_ct aiotask status --json | grep -o '"submitted" *: *[0-9]*' | grep -o '[0-9]*$'; }
# none_alive PID...: none of these processes exists any more in the container.
none_alive() { local pid; for pid in "$@"; do in_ct test -d "/proc/$pid" && return 1; done; return 0; }
# journal_cursor: the cursor of the journal's last entry, to read only what a phase adds after it.
journal_cursor() { in_ct journalctl --no-pager -n 1 --show-cursor -q | sed -n 's/^-- cursor: //p'; }
# pool_is_unprivileged: every pool process has the main process's non-root uid, CapEff 0 and NoNewPrivs 1.
pool_is_unprivileged() {
    local main uid pids pid
    main=$(main_pid) || return 1
    uid=$(in_ct awk '/^Uid:/ { print $2 }' "/proc/$main/status")
    [ -n "$uid" ] && [ "$uid" != 0 ] || return 1
    pids=$(pool_pids) && [ -n "$pids" ] || return 1
    for pid in $pids; do
        in_ct awk -v uid="$uid" '
            /^Uid:/ { ok_uid = ($2 == uid && $3 == uid && $4 == uid) }
            /^CapEff:/ { ok_cap = ($2 ~ /^0+$/) }
            /^NoNewPrivs:/ { ok_nnp = ($2 == 1) }
            END { exit !(ok_uid && ok_cap && ok_nnp) }' "/proc/$pid/status" || return 1
    done
}
# Every pool process maps its payload arena: the part of its claims memfd after the first page.
pool_maps_shared_payloads() {
    local pids pid
    pids=$(pool_pids) && [ -n "$pids" ] || return 1
    for pid in $pids; do
        in_ct grep -q ' rw-s 00001000 .*memfd:aiotask-claims' "/proc/$pid/maps" || return 1
    done
}
journal_lacks() { ! in_ct journalctl -u aiotask --no-pager -q -o cat | grep -q "$1"; }
journal_tail() { in_ct journalctl -u aiotask.service -u aiotask.socket --no-pager -n "${1:-25}" | sed 's/^/      /'; }

run_suite() {
    local t0 out rc main restarts

    phase "debootstrap cache"
    check "minimal $SUITE root with systemd (cached in $CACHE/$SUITE.tar)" ensure_cache || return 1

    phase "boot container"
    check "container boots: systemctl is-system-running is running or degraded" boot || return 1

    phase "apt-get install ./aiotask.deb"
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

    phase "socket activation, CLI, status, journal"
    if ! check "aiotask submit hello -> hello (starts the service)" submit_is hello hello; then
        journal_tail
        return 1
    fi
    check "aiotask submit from stdin" [ "$(sh_ct 'printf "from stdin" | aiotask submit')" = "from stdin" ]
    check "aiotask.service is active (running) after READY=1" \
        [ "$(service_prop ActiveState)/$(service_prop SubState)" = active/running ]
    wait_until 5 status_line_is_live
    out=$(service_prop StatusText)
    info "StatusText: $out"
    check "systemctl show -p StatusText has the live Workers: line" status_line_is_live
    check "aiotask status answers" sh_ct 'aiotask status >/dev/null'
    out=$(in_ct aiotask status --json 2>&1)
    check "aiotask status --json reports the handler echo" grep -q '"handler" *: *"echo"' <<<"$out"
    check "journalctl -u aiotask has entries" [ "$(in_ct journalctl -u aiotask --no-pager -q -o cat | wc -l)" -gt 0 ]
    check "a user outside the group aiotask is refused" \
        sh_ct '! setpriv --reuid=nobody --regid=nogroup --clear-groups aiotask submit x >/dev/null 2>&1'
    sh_ct 'id e2euser >/dev/null 2>&1 || useradd --no-create-home --groups aiotask e2euser'
    check "a member of the group aiotask may submit" \
        [ "$(in_ct setpriv --reuid=e2euser --regid=e2euser --init-groups aiotask submit member)" = member ]
    # A handler gets no more privilege than the daemon: same unprivileged user, no capabilities, no_new_privs.
    check "pool processes run as the daemon's unprivileged user, with no capabilities and NoNewPrivs" \
        pool_is_unprivileged
    # Large payloads travel through memory the pool processes share with the daemon, sandbox and all.
    check "pool processes map the memory they share with the daemon for large payloads" pool_maps_shared_payloads
    out=$(sh_ct 'aiotask bench --tasks 200 --concurrency 4 --size 1048576 --json' 2>&1); rc=$?
    check "aiotask bench: 200 tasks of 1 MiB all came back whole" [ $rc -eq 0 ] || printf '%s\n' "$out" | tail -n 5
    check "the journal has no pool process without shared memory" journal_lacks 'no memory shared'

    phase "reload under load (no task lost)"
    set_config workers 2
    check "systemctl reload aiotask (workers = 2)" reload_and_wait
    sh_ct 'aiotask bench --tasks 20000 --concurrency 64 --connections 4 --size 256 --json' >"$WORKDIR/bench.log" 2>&1 &
    local bench=$!
    # Sequential submits, each on a new connection, until the reloads are over: load through every reload.
    sh_ct 'rm -f /root/reload.done; i=0; fail=0; while [ ! -e /root/reload.done ]; do i=$((i + 1)); out=$(aiotask submit "task $i" 2>&1); [ "$out" = "task $i" ] || { echo "task $i: $out"; fail=1; }; done; echo "$i submits"; exit $fail' \
        >"$WORKDIR/loop.log" 2>&1 &
    local loop=$!
    BACKGROUND+=("$bench" "$loop")
    local reloads=0 resized=0 loaded=0 n before after
    for n in 3 2 3 2 3; do
        before=$(submitted_count)
        sleep 0.4
        set_config workers "$n"
        reload_and_wait && reloads=$((reloads + 1))
        # Retired processes finish their task first; the pool then has exactly the new size.
        wait_until 10 pool_size_is "$n" && resized=$((resized + 1))
        after=$(submitted_count)
        [ -n "$before" ] && [ -n "$after" ] && [ "$after" -gt "$before" ] && loaded=$((loaded + 1))
    done
    sh_ct 'touch /root/reload.done'
    check "5 reloads while tasks run" [ $reloads -eq 5 ]
    check "the pool took each new size in turn (3, 2, 3, 2, 3 processes)" [ $resized -eq 5 ]
    check "tasks kept arriving across each of the 5 reloads" [ $loaded -eq 5 ]
    wait_until 120 sh -c "! kill -0 $bench 2>/dev/null && ! kill -0 $loop 2>/dev/null"
    wait "$bench"; rc=$?
    out=$(cat "$WORKDIR/bench.log")
    info "bench: $out"
    check "bench of 20000 tasks across the reloads: all done, none failed" \
        sh -c "[ $rc -eq 0 ] && grep -q '\"failed\" *: *0[,}]' '$WORKDIR/bench.log' && grep -q '\"tasks\" *: *20000[,}]' '$WORKDIR/bench.log'"
    wait "$loop"; rc=$?
    info "loop: $(tail -n 1 "$WORKDIR/loop.log")"
    check "sequential submits across the reloads all returned their task" [ $rc -eq 0 ] ||
        head -n 5 "$WORKDIR/loop.log"
    BACKGROUND=()
    check "the service kept its main process across reloads" [ "$(service_prop NRestarts)" = 0 ]

    phase "restart under load (no task lost)"
    # Three clients submit one task per connection without pause while the service restarts three times:
    # the socket unit holds the listening socket, so each connection is served by one instance or the next.
    rm -f "$ROOTDIR"/root/restart.*
    local client
    for client in 1 2 3; do
        sh_ct "n=0; failed=0; while [ ! -e /root/restart.done ]; do
                out=\$(aiotask submit \"$client-\$n\" 2>&1) && [ \"\$out\" = \"$client-\$n\" ] ||
                    { failed=\$((failed + 1)); echo \"client $client task \$n: \$out\" >>/root/restart.failures; }
                n=\$((n + 1)); done; echo \"\$n \$failed\" >/root/restart.count.$client" &
        BACKGROUND+=($!)
    done
    local restarts=0 before
    for n in 1 2 3; do
        sleep 0.5
        before=$(main_pid)
        in_ct systemctl restart aiotask && wait_until 20 sh -c "[ \"\$(nsenter -t $CPID -a systemctl show -P MainPID aiotask)\" != '$before' ]" &&
            restarts=$((restarts + 1))
    done
    sleep 0.5
    sh_ct 'touch /root/restart.done'
    for pid in "${BACKGROUND[@]}"; do wait "$pid"; done
    BACKGROUND=()
    check "3 restarts while clients submit" [ $restarts -eq 3 ]
    local total=0 lost=0 count failures
    for client in 1 2 3; do
        read -r count failures <"$ROOTDIR/root/restart.count.$client" || { count=0; failures=1; }
        total=$((total + count)); lost=$((lost + failures))
    done
    info "tasks submitted across the restarts: $total, failed: $lost"
    [ -s "$ROOTDIR/root/restart.failures" ] && head -n 5 "$ROOTDIR/root/restart.failures" | sed "s/^/      [$SUITE] /"
    check "clients submitting across 3 restarts got every result ($total tasks)" sh -c "[ $total -gt 0 ] && [ $lost -eq 0 ]"
    # Three restarts in a few seconds count toward the service's start limit (5 starts in 10 s, there to stop
    # crash loops); flush the counter so that the restarts of the next phases are not refused.
    in_ct systemctl reset-failed aiotask.service

    phase "chaos handler: failures, crashes"
    set_config handler chaos
    set_config workers 2
    check "handler = chaos, workers = 2, systemctl reload aiotask" reload_and_wait
    out=$(in_ct aiotask submit "fail boom" 2>&1); rc=$?
    info "aiotask submit 'fail boom': exit $rc: $out"
    check "a failing task exits 1 with 'handler error: boom'" sh -c "[ $rc -eq 1 ] && printf '%s' '$out' | grep -q 'handler error.*boom'"
    out=$(in_ct journalctl -u aiotask --no-pager -o verbose REASON="handler error")
    check "journalctl -u aiotask REASON='handler error' shows the failure with TASK_ID=" \
        sh -c "printf '%s' \"\$1\" | grep -q 'TASK_ID=' && printf '%s' \"\$1\" | grep -q 'MESSAGE=task failed: handler error: boom'" _ "$out"
    check "journalctl -p warning has the failure" \
        sh -c "[ -n \"\$(nsenter -t $CPID -a journalctl -u aiotask -p warning --no-pager -q -o cat | grep boom)\" ]"

    main=$(main_pid) || { fail "aiotask.service has no main process"; journal_tail; return 1; }
    sh_ct 'aiotask submit "sleep 3000"' >"$WORKDIR/crash.log" 2>&1 &
    local crash=$!
    BACKGROUND+=("$crash")
    # The pool process running the sleep is the one of the two that does not answer "pid" meanwhile.
    wait_until 5 sh -c "nsenter -t $CPID -a aiotask status --json | grep -q '\"busy\" *: *1[,}]'"
    local all idle busy
    all=$(pool_pids)
    idle=$(for _ in 1 2 3 4 5 6; do in_ct aiotask submit pid; echo; done | sort -u)
    busy=$(comm -23 <(printf '%s\n' "$all") <(printf '%s\n' "$idle"))
    info "pool processes: $(echo $all); busy: $busy"
    if [ -n "$busy" ] && [ "$(wc -w <<<"$busy")" = 1 ]; then
        in_ct kill -9 "$busy"
        wait_until 10 sh -c "! kill -0 $crash 2>/dev/null"
        wait "$crash"; rc=$?
        out=$(cat "$WORKDIR/crash.log")
        info "aiotask submit 'sleep 3000' after kill -9 $busy: exit $rc: $out"
        check "kill -9 of the busy pool process fails its task with 'worker crashed' (exit 1)" \
            sh -c "[ $rc -eq 1 ] && grep -q 'worker crashed' '$WORKDIR/crash.log'"
    else
        fail "could not tell the busy pool process ($busy)"
        kill "$crash" 2>/dev/null
    fi
    BACKGROUND=()
    check "the service keeps running with the same main process" [ "$(service_prop MainPID)" = "$main" ]
    check "the pool is back to 2 processes" wait_until 10 sh -c "[ \$(nsenter -t $CPID -a pgrep -c -P $main) -eq 2 ]"
    check "a new task works after the crash" submit_is hi "echo hi"
    check "journal has the crash with its MESSAGE_ID" \
        sh -c "nsenter -t $CPID -a journalctl -u aiotask --no-pager -q MESSAGE_ID=252003be70ec440dbb6da5207eaeba66 | grep -q 'worker crashed'"

    phase "kill -9 of the main process"
    main=$(main_pid) || { fail "aiotask.service has no main process"; journal_tail; return 1; }
    restarts=$(service_prop NRestarts)
    # The pool's own processes, recorded before the kill: once their parent is gone they have a new one, so only
    # their pids tell whether they survived it.
    local pool
    pool=$(pool_pids)
    check "the pool has its processes before the kill" [ -n "$pool" ]
    t0=$(now)
    in_ct kill -9 "$main"
    check "systemd restarts the service (new main process, NRestarts + 1)" \
        wait_until 30 sh -c "[ \"\$(nsenter -t $CPID -a systemctl show -P NRestarts aiotask)\" = $((restarts + 1)) ] &&
            [ \"\$(nsenter -t $CPID -a systemctl show -P SubState aiotask)\" = running ]"
    info "restarted in $(elapsed "$t0") s: main process $main -> $(service_prop MainPID)"
    # shellcheck disable=SC2086 # one pid per word
    check "no pool process of the killed main process is left" wait_until 10 none_alive $pool
    check "aiotask.socket stayed active" is_active aiotask.socket
    check "a new submit works" submit_is "after restart" "echo after restart"

    phase "a handler's process outside its group dies with its task and with the service"
    # chaos "escape" starts sleep 3600 in a session of its own: the group kill misses it. aiotaskd (a child
    # subreaper) kills it when it stops (and when the task's process is stopped: LeftoverProcessTests); after a
    # kill -9 of aiotaskd, KillMode=mixed does.
    local escaped
    escaped=$(in_ct aiotask submit escape)
    check "chaos escape started a process in a session of its own ($escaped)" \
        sh_ct "[ \"\$(ps -o sid= -p '$escaped' | tr -d ' ')\" = '$escaped' ]"
    in_ct systemctl restart aiotask.service
    check "systemctl restart: aiotaskd killed it and logged it" \
        wait_until 10 sh -c "! nsenter -t $CPID -a kill -0 '$escaped' 2>/dev/null &&
            nsenter -t $CPID -a journalctl -u aiotask --no-pager -q -o cat | grep -q 'killed process $escaped '"
    in_ct systemctl reset-failed aiotask.service
    main=$(main_pid) || { fail "aiotask.service has no main process"; journal_tail; return 1; }
    escaped=$(in_ct aiotask submit escape)
    in_ct kill -9 "$main"
    check "after kill -9 of the main process it is gone too (KillMode=mixed)" \
        wait_until 30 sh -c "! nsenter -t $CPID -a kill -0 '$escaped' 2>/dev/null"
    check "the service runs again" wait_until 30 sh -c "[ \"\$(nsenter -t $CPID -a systemctl show -P SubState aiotask)\" = running ]"

    phase "a stalled service is restarted by the watchdog"
    in_ct systemctl reset-failed aiotask.service
    # A frozen process sends no WATCHDOG=1, like a stuck event loop. A drop-in shortens WatchdogSec= so the
    # test need not wait the packaged 20 s.
    sh_ct 'mkdir -p /run/systemd/system/aiotask.service.d &&
        printf "[Service]\nWatchdogSec=2\n" >/run/systemd/system/aiotask.service.d/watchdog.conf'
    in_ct systemctl daemon-reload
    in_ct systemctl restart aiotask
    check "the service runs with WatchdogSec=2" wait_until 20 sh -c "[ \"\$(nsenter -t $CPID -a systemctl show -P WatchdogUSec aiotask)\" = 2s ] && nsenter -t $CPID -a systemctl is-active -q aiotask"
    main=$(main_pid) || { fail "aiotask.service has no main process"; journal_tail; return 1; }
    restarts=$(service_prop NRestarts)
    t0=$(now)
    in_ct kill -STOP "$main"
    check "systemd kills the stalled service on the watchdog and restarts it" \
        wait_until 30 sh -c "[ \"\$(nsenter -t $CPID -a systemctl show -P NRestarts aiotask)\" = $((restarts + 1)) ] &&
            [ \"\$(nsenter -t $CPID -a systemctl show -P SubState aiotask)\" = running ]"
    info "watchdog restart after $(elapsed "$t0") s: main process $main -> $(service_prop MainPID)"
    check "the journal names the watchdog" \
        sh -c "nsenter -t $CPID -a journalctl -u aiotask --no-pager -q | grep -qi 'watchdog timeout'"
    check "a submit works after the watchdog restart" submit_is watched "echo watched"
    sh_ct 'rm -rf /run/systemd/system/aiotask.service.d'
    in_ct systemctl daemon-reload

    phase "systemctl stop drains"
    sh_ct 'aiotask submit "sleep 2000"' >"$WORKDIR/drain.log" 2>&1 &
    local drain=$!
    BACKGROUND+=("$drain")
    wait_until 5 sh -c "nsenter -t $CPID -a aiotask status --json | grep -q '\"busy\" *: *[1-9]'"
    local cursor
    cursor=$(journal_cursor)
    t0=$(now)
    in_ct systemctl stop aiotask
    info "systemctl stop took $(elapsed "$t0") s"
    wait "$drain"; rc=$?
    BACKGROUND=()
    check "the task in flight finished during the stop ('slept 2000', exit 0)" \
        sh -c "[ $rc -eq 0 ] && grep -q 'slept 2000' '$WORKDIR/drain.log'"
    check "aiotask.service is inactive" [ "$(in_ct systemctl is-active aiotask.service)" = inactive ]
    # Only what this stop logged: earlier restarts drained too.
    check "the journal shows this stop's drain of its 1 task" \
        sh -c "[ -n '$cursor' ] && nsenter -t $CPID -a journalctl -u aiotask --no-pager -q -o cat --after-cursor='$cursor' | grep -q 'draining 1 tasks in flight'"
    check "aiotask.socket still listens and starts the service again" submit_is again "echo again"

    phase "upgrade (reinstall) keeps the socket"
    local socket_since main_before
    socket_since=$(service_prop ActiveEnterTimestampMonotonic aiotask.socket)
    main_before=$(main_pid) || { fail "aiotask.service has no main process"; journal_tail; return 1; }
    # Clients keep connecting while the package is replaced: none may be refused or lose its task.
    sh_ct 'n=0; failed=0; while [ ! -e /root/upgrade.done ]; do
            out=$(aiotask submit "echo during $n" 2>&1) && [ "$out" = "during $n" ] ||
                { failed=$((failed + 1)); echo "task $n: $out" >>/root/upgrade.failures; }
            n=$((n + 1)); done; echo "$n $failed" >/root/upgrade.count' &
    local clients=$!
    BACKGROUND+=("$clients")
    out=$(sh_ct 'cd /root && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --reinstall ./aiotask_*.deb' 2>&1)
    check "apt-get install --reinstall" [ $? -eq 0 ] || printf '%s\n' "$out" | tail -n 10
    sh_ct 'touch /root/upgrade.done'
    wait "$clients"
    BACKGROUND=()
    read -r during failed_during <"$ROOTDIR/root/upgrade.count" || true
    info "tasks submitted during the upgrade: ${during:-0}, failed: ${failed_during:-?}"
    [ -s "$ROOTDIR/root/upgrade.failures" ] && sed "s/^/      [$SUITE] /" "$ROOTDIR/root/upgrade.failures"
    check "clients that connected during the upgrade were all served (${during:-0} tasks)" \
        sh -c "[ '${during:-0}' -gt 0 ] && [ '${failed_during:-1}' -eq 0 ]"
    check "aiotask.socket was not restarted" \
        [ "$(service_prop ActiveEnterTimestampMonotonic aiotask.socket)" = "$socket_since" ]
    check "the running service was restarted onto the new files" \
        sh -c "[ \"\$(nsenter -t $CPID -a systemctl show -P MainPID aiotask)\" != $main_before ]"
    check "handler = chaos kept (conffile untouched)" grep -q '^handler = chaos' "$ROOTDIR/etc/aiotask/aiotaskd.conf"
    check "a submit works after the upgrade" submit_is upgraded "echo upgraded"

    phase "apt-get purge"
    out=$(in_ct env DEBIAN_FRONTEND=noninteractive apt-get purge -y -q aiotask 2>&1)
    check "apt-get purge -y aiotask" [ $? -eq 0 ] || printf '%s\n' "$out" | tail -n 10
    check "no aiotask process is left" wait_until 10 sh -c "! nsenter -t $CPID -a pgrep -x 'aiotaskd|aiotask' >/dev/null"
    check "/etc/aiotask is gone" [ ! -e "$ROOTDIR/etc/aiotask" ]
    check "the group aiotask is gone" sh_ct '! getent group aiotask >/dev/null'
    check "aiotask.socket is gone" sh -c "[ \"\$(nsenter -t $CPID -a systemctl is-active aiotask.socket)\" != active ] &&
        [ ! -e '$ROOTDIR/run/aiotask/aiotask.sock' ]"
    check "no unit files are left" sh -c "! ls '$ROOTDIR'/lib/systemd/system/aiotask.* '$ROOTDIR'/etc/systemd/system/*/aiotask.* >/dev/null 2>&1"

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
