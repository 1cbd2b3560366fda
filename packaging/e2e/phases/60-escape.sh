# chaos "escape" starts sleep 3600 in a session of its own: the group kill misses it. aiotaskd (a child
# subreaper) kills it when it stops (and when the task's process is stopped: LeftoverProcessTests); after a
# kill -9 of aiotaskd, KillMode=mixed does.

phase "a handler's process outside its group dies with its task and with the service"

local escaped

leads_its_session() { [ "$(in_ct ps -o sid= -p "$1" | tr -d ' ')" = "$1" ]; }
killed_and_logged() { is_gone "$1" && journal_has "killed process $1 "; }

ensure_config handler chaos || { fail "cannot run the service with handler = chaos"; journal_tail; stop_suite; return; }
escaped=$(in_ct aiotask submit escape)
check "chaos escape started a process in a session of its own ($escaped)" leads_its_session "$escaped"
in_ct systemctl restart aiotask.service
check "systemctl restart: aiotaskd killed it and logged it" wait_until 10 killed_and_logged "$escaped"
in_ct systemctl reset-failed aiotask.service
main=$(main_pid) || { fail "aiotask.service has no main process"; journal_tail; stop_suite; return; }
escaped=$(in_ct aiotask submit escape)
in_ct kill -9 "$main"
check "after kill -9 of the main process it is gone too (KillMode=mixed)" wait_until 30 is_gone "$escaped"
check "the service runs again" wait_until 30 service_is_running
