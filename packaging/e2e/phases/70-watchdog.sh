# A frozen process sends no WATCHDOG=1, like a stuck event loop: systemd kills and restarts it. A drop-in
# shortens WatchdogSec= so the test need not wait the packaged 20 s.

phase "a stalled service is restarted by the watchdog"

local restarts

runs_with_short_watchdog() { service_prop_is WatchdogUSec 2s && in_ct systemctl is-active -q aiotask; }
journal_names_watchdog() { in_ct journalctl -u aiotask --no-pager -q | grep -qi 'watchdog timeout'; }

ensure_config handler chaos || { fail "cannot run the service with handler = chaos"; journal_tail; stop_suite; return; }
in_ct systemctl reset-failed aiotask.service
sh_ct 'mkdir -p /run/systemd/system/aiotask.service.d &&
    printf "[Service]\nWatchdogSec=2\n" >/run/systemd/system/aiotask.service.d/watchdog.conf'
in_ct systemctl daemon-reload
in_ct systemctl restart aiotask
check "the service runs with WatchdogSec=2" wait_until 20 runs_with_short_watchdog
main=$(main_pid) || { fail "aiotask.service has no main process"; journal_tail; stop_suite; return; }
restarts=$(service_prop NRestarts)
t0=$(now)
in_ct kill -STOP "$main"
check "systemd kills the stalled service on the watchdog and restarts it" \
    wait_until 30 service_restarted_to $((restarts + 1))
info "watchdog restart after $(elapsed "$t0") s: main process $main -> $(service_prop MainPID)"
# systemd logs the timeout as it kills the service; journald may store it a moment after the restart is seen.
check "the journal names the watchdog" wait_until 5 journal_names_watchdog
check "a submit works after the watchdog restart" submit_is watched "echo watched"
in_ct rm -rf /run/systemd/system/aiotask.service.d
in_ct systemctl daemon-reload
