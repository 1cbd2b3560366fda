# Three clients submit one task per connection without pause while the service restarts three times: the
# socket unit holds the listening socket, so each connection is served by one instance or the next.

phase "restart under load (no task lost)"

local restarts total lost

# restart_client N: runs in the container until /root/restart.done exists; then writes "TASKS FAILED" to
# /root/restart.count.N.
restart_client() {
    in_ct /bin/sh -c 'client=$1; n=0; failed=0; while [ ! -e /root/restart.done ]; do
            out=$(aiotask submit "$client-$n" 2>&1) && [ "$out" = "$client-$n" ] ||
                { failed=$((failed + 1)); echo "client $client task $n: $out" >>/root/restart.failures; }
            n=$((n + 1)); done; echo "$n $failed" >/root/restart.count.$client' sh "$1"
}

ensure_running || { fail "aiotask.service does not start"; journal_tail; stop_suite; return; }
rm -f "$ROOTDIR"/root/restart.*
for client in 1 2 3; do
    restart_client "$client" &
    BACKGROUND+=($!)
done
restarts=0
for n in 1 2 3; do
    sleep 0.5
    before=$(main_pid)
    in_ct systemctl restart aiotask && wait_until 20 main_pid_is_not "$before" && restarts=$((restarts + 1))
done
sleep 0.5
in_ct touch /root/restart.done
for pid in "${BACKGROUND[@]}"; do wait "$pid"; done
BACKGROUND=()
check "3 restarts while clients submit" [ $restarts -eq 3 ]
total=0 lost=0
for client in 1 2 3; do
    read -r count failures <"$ROOTDIR/root/restart.count.$client" || { count=0; failures=1; }
    total=$((total + count)); lost=$((lost + failures))
done
info "tasks submitted across the restarts: $total, failed: $lost"
[ -s "$ROOTDIR/root/restart.failures" ] && head -n 5 "$ROOTDIR/root/restart.failures" | sed "s/^/      [$SUITE] /"
none_lost() { [ "$total" -gt 0 ] && [ "$lost" -eq 0 ]; }
check "clients submitting across 3 restarts got every result ($total tasks)" none_lost
# Three restarts in a few seconds count toward the service's start limit (5 starts in 10 s, there to stop
# crash loops); flush the counter so that the restarts of the next phases are not refused.
in_ct systemctl reset-failed aiotask.service
