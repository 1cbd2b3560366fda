# The metrics socket, shipped off: enabled, it hands aiotaskd a listener (FileDescriptorName=metrics) that serves
# GET /metrics; a scrape inside the booted system counts the tasks just submitted. A few seconds.

phase "metrics: socket off by default, scraped once enabled"

local before after

# scrape [ACCEPT]: the HTTP response of GET /metrics on 127.0.0.1:9464, through bash's /dev/tcp (the minimal
# system has no curl); fails when nothing listens.
scrape() {
    in_ct timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/9464 || exit 1
        printf "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: %s\r\n\r\n" "$1" >&3
        cat <&3' scrape "${1:-text/plain}"
}
nothing_listens() { ! scrape >/dev/null 2>&1; }
# metric_value NAME_AND_LABELS: the value of one sample of a fresh scrape.
metric_value() { scrape | tr -d '\r' | awk -v m="$1" '$1 == m { print $2; found = 1 } END { exit !found }'; }
# The whole response is read before its first line is looked at: `head` would end the pipe early, and pipefail
# would then count the scrape's SIGPIPE as a failure.
scrape_is_ok() { [ "$(scrape | tr -d '\r' | sed -n 1p)" = "HTTP/1.1 200 OK" ]; }
submitted_grew_by() { awk -v a="$1" -v b="$(metric_value aiotask_tasks_submitted_total)" -v n="$2" 'BEGIN { exit !(b - a >= n) }'; }
openmetrics_ends_with_eof() {
    local text
    text=$(scrape "application/openmetrics-text; version=1.0.0" | tr -d '\r')
    grep -q '^Content-Type: application/openmetrics-text' <<<"$text" && [ "$(tail -n 1 <<<"$text")" = "# EOF" ]
}
pool_gauges_match_processes() {
    local idle busy starting
    idle=$(metric_value 'aiotask_pool_processes{state="idle"}') || return 1
    busy=$(metric_value 'aiotask_pool_processes{state="busy"}') || return 1
    starting=$(metric_value 'aiotask_pool_processes{state="starting"}') || return 1
    awk -v s="$((${idle%.*} + ${busy%.*} + ${starting%.*}))" -v n="$(pool_pids | wc -l)" 'BEGIN { exit !(s == n) }'
}

build_and_process_figures() {
    local text
    text=$(scrape | tr -d '\r')
    grep -q '^aiotask_build_info{version="' <<<"$text" && grep -q '^process_cpu_seconds_total ' <<<"$text"
}

ensure_config handler echo || { fail "cannot run the service with handler = echo"; journal_tail; stop_suite; return; }
check "aiotask-metrics.socket is shipped disabled" [ "$(in_ct systemctl is-enabled aiotask-metrics.socket)" = disabled ]
check "nothing serves metrics by default" nothing_listens
# systemd starts no socket unit while its service runs ("Socket service aiotask.service already active, refusing"):
# the service stops first, and starts again with both sockets.
in_ct systemctl stop aiotask
check "aiotask-metrics.socket starts once enabled" in_ct systemctl enable --now aiotask-metrics.socket
in_ct systemctl start aiotask
check "the service runs again with the metrics socket" wait_until 20 status_line_is_live
check "GET /metrics answers 200" wait_until 10 scrape_is_ok
before=$(metric_value aiotask_tasks_submitted_total) || before=0
check "a submit works beside the metrics listener" submit_is "metrics one" "metrics one"
submit_is "metrics two" "metrics two" >/dev/null
check "aiotask_tasks_submitted_total counts the two tasks" submitted_grew_by "$before" 2
check "the pool gauges add up to the live pool processes" pool_gauges_match_processes
check "OpenMetrics when asked, ending with # EOF" openmetrics_ends_with_eof
check "aiotask_build_info and process_cpu_seconds_total are there" build_and_process_figures
in_ct systemctl disable --now aiotask-metrics.socket
in_ct systemctl restart aiotask
check "the service runs on without the metrics socket" wait_until 20 status_line_is_live
check "nothing serves metrics once the socket is disabled" nothing_listens
# The phase starts the service three or four times in a second or two, which counts toward its start limit (5 starts
# in 10 s, there to stop crash loops); flush the counter so that the next phase's restarts are not refused (an upgrade
# right after this phase then found the service refused and the socket failed).
in_ct systemctl reset-failed aiotask.service
