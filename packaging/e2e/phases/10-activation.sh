# The first connection starts the service; the CLI, the STATUS line, the journal, the socket's group and the
# pool processes' sandbox.

phase "socket activation, CLI, status, journal"

# Every pool process has the main process's non-root uid, CapEff 0 and NoNewPrivs 1.
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
outsider_is_refused() { ! in_ct setpriv --reuid=nobody --regid=nogroup --clear-groups aiotask submit x >/dev/null 2>&1; }

if ! check "aiotask submit hello -> hello (starts the service)" submit_is hello hello; then
    journal_tail
    stop_suite
    return
fi
check "aiotask submit from stdin" [ "$(sh_ct 'printf "from stdin" | aiotask submit')" = "from stdin" ]
check "aiotask.service is active (running) after READY=1" \
    [ "$(service_prop ActiveState)/$(service_prop SubState)" = active/running ]
wait_until 5 status_line_is_live
info "StatusText: $(service_prop StatusText)"
check "systemctl show -p StatusText has the live Workers: line" status_line_is_live
check "aiotask status answers" sh_ct 'aiotask status >/dev/null'
check "aiotask status --json reports the handler echo" status_json_is '.handler == "echo"'
check "journalctl -u aiotask has entries" [ "$(in_ct journalctl -u aiotask --no-pager -q -o cat | wc -l)" -gt 0 ]
check "a user outside the group aiotask is refused" outsider_is_refused
in_ct id e2euser >/dev/null 2>&1 || in_ct useradd --no-create-home --groups aiotask e2euser
check "a member of the group aiotask may submit" \
    [ "$(in_ct setpriv --reuid=e2euser --regid=e2euser --init-groups aiotask submit member)" = member ]
# A handler gets no more privilege than the daemon: same unprivileged user, no capabilities, no_new_privs.
check "pool processes run as the daemon's unprivileged user, with no capabilities and NoNewPrivs" \
    pool_is_unprivileged
# Large payloads travel through memory the pool processes share with the daemon, sandbox and all.
check "pool processes map the memory they share with the daemon for large payloads" pool_maps_shared_payloads
out=$(in_ct aiotask bench --tasks 200 --concurrency 4 --size 1048576 --json 2>&1); rc=$?
check "aiotask bench: 200 tasks of 1 MiB all came back whole" [ $rc -eq 0 ] || printf '%s\n' "$out" | tail -n 5
check "the journal has no pool process without shared memory" journal_lacks 'no memory shared'
