# Helpers shared by packaging/e2e-test.sh and the phases in packaging/e2e/phases/ (sourced, not run).
#
# A phase calls `phase "TITLE"` first, then `check "WHAT" COMMAND...` for each check; COMMAND is a command or
# a function of this file or of the phase, never a `sh -c` string. `stop_suite; return` ends the phase and
# skips the suite's later phases (when what follows cannot run); a failed check alone does not.
# Commands inside the container run through `in_ct`; JSON is read with jq.

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
# phase TITLE: starts a phase; its time goes into the table printed at the end.
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

SUITE_STOPPED=0
# stop_suite: the phase cannot go on, nor can the phases after it; the phase then returns.
stop_suite() { SUITE_STOPPED=1; }

# ---------------------------------------------------------------------------------------------------
# The container

WORKDIR=
ROOTDIR=
NSPAWN_PID=
CPID=
# Host pids of a phase's background jobs: killed by teardown if the phase stops early.
BACKGROUND=()

# in_ct COMMAND...: runs a command inside the container, with a clean environment.
in_ct() {
    nsenter -t "$CPID" -a -- /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        TERM=dumb SYSTEMD_PAGER= "$@"
}
# sh_ct SCRIPT: runs a shell script inside the container (for pipes and loops that must run there).
sh_ct() { in_ct /bin/sh -c "$1"; }

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

system_state() { in_ct systemctl is-system-running 2>/dev/null; }
system_is_up() { local state; state=$(system_state); [ "$state" = running ] || [ "$state" = degraded ]; }

boot() {
    WORKDIR=$(mktemp -d /var/tmp/aiotask-e2e-"$SUITE".XXXXXX)
    ROOTDIR=$WORKDIR/root
    mkdir "$ROOTDIR"
    tar -C "$ROOTDIR" -xf "$CACHE/$SUITE.tar" || return 1
    echo "aiotask-e2e" >"$ROOTDIR/etc/hostname"
    cp "$DEB" "$ROOTDIR/root/"
    # nspawn's own system-call filter (systemd 252) lacks Landlock's calls, which it then refuses to the whole
    # container: let them through, as a booted host does, for aiotaskd's hide-credentials.
    systemd-nspawn -D "$ROOTDIR" --register=no --keep-unit -b -M "aiotask-e2e-$SUITE" --console=pipe \
        --system-call-filter="landlock_create_ruleset landlock_add_rule landlock_restrict_self" \
        </dev/null >"$WORKDIR/console.log" 2>&1 &
    NSPAWN_PID=$!
    wait_until 30 find_init || { info "no init process; console:"; tail -n 20 "$WORKDIR/console.log"; return 1; }
    CPID=$(find_init)
    wait_until 90 system_is_up
    local state
    state=$(system_state)
    info "systemd $(in_ct systemctl --version | awk 'NR == 1 { print $2 }'): $state"
    if [ "$state" = degraded ]; then info "failed units: $(in_ct systemctl --failed --plain --no-legend | awk '{ print $1 }' | tr '\n' ' ')"; fi
    [ "$state" = running ] || [ "$state" = degraded ]
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

# ---------------------------------------------------------------------------------------------------
# The service inside the container

service_prop() { in_ct systemctl show -P "$1" "${2:-aiotask.service}"; }
# service_prop_is NAME VALUE [UNIT]
service_prop_is() { [ "$(service_prop "$1" "${3:-aiotask.service}")" = "$2" ]; }
is_active() { [ "$(in_ct systemctl is-active "$1")" = active ]; }
is_not_running() { ! is_active aiotask.service; }
service_is_running() { service_prop_is SubState running; }
# service_restarted_to N: systemd has restarted the service N times in all and it runs again.
service_restarted_to() { service_prop_is NRestarts "$1" && service_is_running; }
main_pid_is_not() { [ "$(service_prop MainPID)" != "$1" ]; }
status_line_is_live() { service_prop StatusText | grep -q '^Workers: '; }
set_config() { sh_ct "sed -i -E 's|^#?[[:space:]]*$1[[:space:]]*=.*|$1 = $2|' /etc/aiotask/aiotaskd.conf"; }
# reload_and_wait: systemctl reload returns once READY=1 follows RELOADING=1; the STATUS line is back then.
reload_and_wait() { in_ct systemctl reload aiotask && wait_until 20 status_line_is_live; }
# ensure_running: starts the service unless it runs (for a phase run alone with --phase).
ensure_running() {
    is_active aiotask.service && return 0
    in_ct systemctl start aiotask && wait_until 20 status_line_is_live
}
# ensure_config KEY VALUE: the conffile sets KEY = VALUE and the running service has loaded it. What an
# earlier phase leaves behind, set up again by a phase that needs it; changes nothing when it is already so.
ensure_config() {
    if in_ct grep -q "^$1 = $2\$" /etc/aiotask/aiotaskd.conf; then
        ensure_running
    else
        set_config "$1" "$2"
        if is_active aiotask.service; then reload_and_wait; else ensure_running; fi
    fi
}
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
# children_count_is PID N: the process PID has N children.
children_count_is() { [ "$(in_ct pgrep -c -P "$1")" -eq "$2" ]; }
# status_json: the daemon's statistics (`aiotask status --json`).
status_json() { in_ct aiotask status --json; }
# status_json_is FILTER: the jq FILTER is true of the daemon's statistics, e.g. '.workers.busy == 1'.
status_json_is() { status_json | jq -e "$1" >/dev/null; }
# submitted_count: the daemon's count of tasks submitted so far.
submitted_count() { status_json | jq -e '.tasks.submitted'; }
# none_alive PID...: none of these processes exists any more in the container.
none_alive() { local pid; for pid in "$@"; do in_ct test -d "/proc/$pid" && return 1; done; return 0; }
# is_gone PID: no process PID in the container.
is_gone() { ! in_ct kill -0 "$1" 2>/dev/null; }
# journal_cursor: the cursor of the journal's last entry, to read only what a phase adds after it.
journal_cursor() { in_ct journalctl --no-pager -n 1 --show-cursor -q | sed -n 's/^-- cursor: //p'; }
# journal_has PATTERN [JOURNALCTL ARGUMENT...]: aiotask.service logged a message matching the grep PATTERN.
journal_has() { local pattern=$1; shift; in_ct journalctl -u aiotask --no-pager -q -o cat "$@" | grep -q -- "$pattern"; }
journal_lacks() { ! journal_has "$1"; }
journal_tail() { in_ct journalctl -u aiotask.service -u aiotask.socket --no-pager -n "${1:-25}" | sed 's/^/      /'; }
