# The chaos handler: a failing task and its journal entries; kill -9 of the busy pool process fails only its
# task, and the pool gets its process back.

phase "chaos handler: failures, crashes"

local crash all idle busy

failed_with_boom() { [ "$1" -eq 1 ] && grep -q 'handler error.*boom' <<<"$2"; }
journal_entry_has_task_id() {
    local entry
    entry=$(in_ct journalctl -u aiotask --no-pager -o verbose REASON="handler error")
    grep -q 'TASK_ID=' <<<"$entry" && grep -q 'MESSAGE=task failed: handler error: boom' <<<"$entry"
}
warning_has_boom() { [ -n "$(in_ct journalctl -u aiotask -p warning --no-pager -q -o cat | grep boom)" ]; }
crashed_task_failed() { [ "$1" -eq 1 ] && grep -q 'worker crashed' "$WORKDIR/crash.log"; }
journal_has_crash() {
    in_ct journalctl -u aiotask --no-pager -q MESSAGE_ID=252003be70ec440dbb6da5207eaeba66 | grep -q 'worker crashed'
}

ensure_running || { fail "aiotask.service does not start"; journal_tail; stop_suite; return; }
set_config handler chaos
set_config workers 2
check "handler = chaos, workers = 2, systemctl reload aiotask" reload_and_wait
out=$(in_ct aiotask submit "fail boom" 2>&1); rc=$?
info "aiotask submit 'fail boom': exit $rc: $out"
check "a failing task exits 1 with 'handler error: boom'" failed_with_boom "$rc" "$out"
check "journalctl -u aiotask REASON='handler error' shows the failure with TASK_ID=" journal_entry_has_task_id
check "journalctl -p warning has the failure" warning_has_boom

main=$(main_pid) || { fail "aiotask.service has no main process"; journal_tail; stop_suite; return; }
in_ct aiotask submit "sleep 3000" >"$WORKDIR/crash.log" 2>&1 &
crash=$!
BACKGROUND+=("$crash")
# The pool process running the sleep is the one of the two that does not answer "pid" meanwhile.
wait_until 5 status_json_is '.workers.busy == 1'
all=$(pool_pids)
idle=$(for _ in 1 2 3 4 5 6; do in_ct aiotask submit pid; echo; done | sort -u)
busy=$(comm -23 <(printf '%s\n' "$all") <(printf '%s\n' "$idle"))
info "pool processes: $(echo $all); busy: $busy"
if [ -n "$busy" ] && [ "$(wc -w <<<"$busy")" = 1 ]; then
    in_ct kill -9 "$busy"
    crash_client_done() { ! kill -0 "$crash" 2>/dev/null; }
    wait_until 10 crash_client_done
    wait "$crash"; rc=$?
    info "aiotask submit 'sleep 3000' after kill -9 $busy: exit $rc: $(cat "$WORKDIR/crash.log")"
    check "kill -9 of the busy pool process fails its task with 'worker crashed' (exit 1)" crashed_task_failed "$rc"
else
    fail "could not tell the busy pool process ($busy)"
    kill "$crash" 2>/dev/null
fi
BACKGROUND=()
check "the service keeps running with the same main process" service_prop_is MainPID "$main"
check "the pool is back to 2 processes" wait_until 10 children_count_is "$main" 2
check "a new task works after the crash" submit_is hi "echo hi"
check "journal has the crash with its MESSAGE_ID" journal_has_crash
