# systemctl stop lets the task in flight finish; the socket then starts the service again.

phase "systemctl stop drains"

local drain cursor

drained_task_finished() { [ "$1" -eq 0 ] && grep -q 'slept 2000' "$WORKDIR/drain.log"; }
# Only what this stop logged: earlier restarts drained too.
stop_drained_one() { [ -n "$1" ] && journal_has 'draining 1 tasks in flight' --after-cursor="$1"; }

ensure_config handler chaos || { fail "cannot run the service with handler = chaos"; journal_tail; stop_suite; return; }
in_ct aiotask submit "sleep 2000" >"$WORKDIR/drain.log" 2>&1 &
drain=$!
BACKGROUND+=("$drain")
wait_until 5 status_json_is '.workers.busy >= 1'
cursor=$(journal_cursor)
t0=$(now)
in_ct systemctl stop aiotask
info "systemctl stop took $(elapsed "$t0") s"
wait "$drain"; rc=$?
BACKGROUND=()
check "the task in flight finished during the stop ('slept 2000', exit 0)" drained_task_finished "$rc"
check "aiotask.service is inactive" [ "$(in_ct systemctl is-active aiotask.service)" = inactive ]
# journald stores the stopping daemon's last lines asynchronously: they may come a moment after the stop.
check "the journal shows this stop's drain of its 1 task" wait_until 5 stop_drained_one "$cursor"
check "aiotask.socket still listens and starts the service again" submit_is again "echo again"
