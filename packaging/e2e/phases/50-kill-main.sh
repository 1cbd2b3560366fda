# kill -9 of aiotaskd: systemd restarts it, none of its pool processes is left, the socket stays.

phase "kill -9 of the main process"

local restarts pool

ensure_config handler chaos || { fail "cannot run the service with handler = chaos"; journal_tail; stop_suite; return; }
main=$(main_pid) || { fail "aiotask.service has no main process"; journal_tail; stop_suite; return; }
restarts=$(service_prop NRestarts)
# The pool's own processes, recorded before the kill: once their parent is gone they have a new one, so only
# their pids tell whether they survived it.
pool=$(pool_pids)
check "the pool has its processes before the kill" [ -n "$pool" ]
t0=$(now)
in_ct kill -9 "$main"
check "systemd restarts the service (new main process, NRestarts + 1)" \
    wait_until 30 service_restarted_to $((restarts + 1))
info "restarted in $(elapsed "$t0") s: main process $main -> $(service_prop MainPID)"
# shellcheck disable=SC2086 # one pid per word
check "no pool process of the killed main process is left" wait_until 10 none_alive $pool
check "aiotask.socket stayed active" is_active aiotask.socket
check "a new submit works" submit_is "after restart" "echo after restart"
