# Five reloads that resize the pool while a bench and sequential submits keep it busy: no task is lost.

phase "reload under load (no task lost)"

local bench loop reloads resized loaded before after

ensure_running || { fail "aiotask.service does not start"; journal_tail; stop_suite; return; }
set_config workers 2
check "systemctl reload aiotask (workers = 2)" reload_and_wait
in_ct aiotask bench --tasks 20000 --concurrency 64 --connections 4 --size 256 --json \
    >"$WORKDIR/bench.json" 2>"$WORKDIR/bench.err" &
bench=$!
# Sequential submits, each on a new connection, until the reloads are over: load through every reload.
sh_ct 'rm -f /root/reload.done; i=0; fail=0; while [ ! -e /root/reload.done ]; do i=$((i + 1)); out=$(aiotask submit "task $i" 2>&1); [ "$out" = "task $i" ] || { echo "task $i: $out"; fail=1; }; done; echo "$i submits"; exit $fail' \
    >"$WORKDIR/loop.log" 2>&1 &
loop=$!
BACKGROUND+=("$bench" "$loop")
reloads=0 resized=0 loaded=0
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
in_ct touch /root/reload.done
check "5 reloads while tasks run" [ $reloads -eq 5 ]
check "the pool took each new size in turn (3, 2, 3, 2, 3 processes)" [ $resized -eq 5 ]
check "tasks kept arriving across each of the 5 reloads" [ $loaded -eq 5 ]
reload_jobs_done() { ! kill -0 "$bench" 2>/dev/null && ! kill -0 "$loop" 2>/dev/null; }
wait_until 120 reload_jobs_done
wait "$bench"; rc=$?
info "bench: $(cat "$WORKDIR/bench.json" "$WORKDIR/bench.err")"
bench_all_done() { [ "$1" -eq 0 ] && jq -e '.failed == 0 and .tasks == 20000' "$WORKDIR/bench.json" >/dev/null; }
check "bench of 20000 tasks across the reloads: all done, none failed" bench_all_done $rc
wait "$loop"; rc=$?
info "loop: $(tail -n 1 "$WORKDIR/loop.log")"
check "sequential submits across the reloads all returned their task" [ $rc -eq 0 ] ||
    head -n 5 "$WORKDIR/loop.log"
BACKGROUND=()
check "the service kept its main process across reloads" [ "$(service_prop NRestarts)" = 0 ]
