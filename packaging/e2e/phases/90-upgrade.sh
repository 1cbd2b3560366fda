# apt-get install --reinstall while a client keeps connecting: the socket stays, the service restarts onto
# the new files, the conffile is kept, and no client is refused or loses its task.

phase "upgrade (reinstall) keeps the socket"

local socket_since main_before clients during failed_during

upgrade_client() {
    in_ct /bin/sh -c 'n=0; failed=0; while [ ! -e /root/upgrade.done ]; do
            out=$(aiotask submit "echo during $n" 2>&1) && [ "$out" = "during $n" ] ||
                { failed=$((failed + 1)); echo "task $n: $out" >>/root/upgrade.failures; }
            n=$((n + 1)); done; echo "$n $failed" >/root/upgrade.count'
}
all_served() { [ "${during:-0}" -gt 0 ] && [ "${failed_during:-1}" -eq 0 ]; }

ensure_config handler chaos || { fail "cannot run the service with handler = chaos"; journal_tail; stop_suite; return; }
socket_since=$(service_prop ActiveEnterTimestampMonotonic aiotask.socket)
main_before=$(main_pid) || { fail "aiotask.service has no main process"; journal_tail; stop_suite; return; }
upgrade_client &
clients=$!
BACKGROUND+=("$clients")
out=$(sh_ct 'cd /root && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --reinstall ./aiotask_*.deb' 2>&1)
check "apt-get install --reinstall" [ $? -eq 0 ] || printf '%s\n' "$out" | tail -n 10
in_ct touch /root/upgrade.done
wait "$clients"
BACKGROUND=()
read -r during failed_during <"$ROOTDIR/root/upgrade.count" || true
info "tasks submitted during the upgrade: ${during:-0}, failed: ${failed_during:-?}"
[ -s "$ROOTDIR/root/upgrade.failures" ] && sed "s/^/      [$SUITE] /" "$ROOTDIR/root/upgrade.failures"
check "clients that connected during the upgrade were all served (${during:-0} tasks)" all_served
check "aiotask.socket was not restarted" service_prop_is ActiveEnterTimestampMonotonic "$socket_since" aiotask.socket
check "the running service was restarted onto the new files" main_pid_is_not "$main_before"
check "handler = chaos kept (conffile untouched)" grep -q '^handler = chaos' "$ROOTDIR/etc/aiotask/aiotaskd.conf"
check "a submit works after the upgrade" submit_is upgraded "echo upgraded"
