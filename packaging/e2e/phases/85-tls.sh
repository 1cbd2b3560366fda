# TLS the systemd way. The certificate, its key and the clients' CA come in through LoadCredential= (a drop-in with
# the lines the packaged unit shows commented out), named relative to the credentials folder in aiotaskd.conf, and
# aiotask-tls.socket hands aiotaskd a listener named "tls". The CLI submits with a client certificate; a client
# without one is refused in the handshake and the journal says who and why; a handler cannot read the key. Then the
# rotation: with the files in a folder the service may read, `systemctl reload` under load serves a new certificate
# to new connections, loses no task and drops no established connection, and a bad new certificate is refused with
# the old one kept. Certificates are made on the host with openssl, at test time. Half a minute.

phase "tls: credentials, mutual TLS, a refused client in the journal, rotation under load"

local tls=$WORKDIR/tls ct_tls=/etc/aiotask/tls bench rc
local port=4443 fingerprint_before
mkdir -p "$tls"

# make_cert NAME SUBJECT [EXTENSIONS]: a P-256 key and a certificate for it signed by the test CA.
make_cert() {
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "$2" \
        -keyout "$tls/$1.key" -out "$tls/$1.csr" 2>/dev/null &&
        openssl x509 -req -in "$tls/$1.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" -CAcreateserial -days 2 \
            -extfile <(printf '%s\n' "${3:-basicConstraints=CA:FALSE}") -out "$tls/$1.pem" 2>/dev/null
}
make_certificates() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=aiotask-e2e-ca -keyout "$tls/ca.key" -out "$tls/ca.pem" 2>/dev/null &&
        make_cert server /CN=localhost "subjectAltName=IP:127.0.0.1,DNS:localhost" &&
        make_cert server2 /CN=localhost "subjectAltName=IP:127.0.0.1,DNS:localhost" &&
        make_cert client /CN=e2e-client "extendedKeyUsage=clientAuth"
}
check "openssl makes a CA, two server certificates and a client certificate" make_certificates ||
    { stop_suite; return; }

# The files the service reads through LoadCredential= (root's, 0600: systemd copies them for the service), and the
# client's, for the CLI run as root inside the container.
mkdir -p "$ROOTDIR$ct_tls"
install -m 0600 "$tls/server.pem" "$tls/server.key" "$tls/ca.pem" "$tls/client.pem" "$tls/client.key" \
    "$ROOTDIR$ct_tls/"
mkdir -p "$ROOTDIR/etc/systemd/system/aiotask.service.d"
cat >"$ROOTDIR/etc/systemd/system/aiotask.service.d/tls.conf" <<UNIT
[Service]
LoadCredential=server.pem:$ct_tls/server.pem
LoadCredential=server.key:$ct_tls/server.key
LoadCredential=clients-ca.pem:$ct_tls/ca.pem
UNIT
in_ct systemctl daemon-reload
check "aiotask-tls.socket is shipped disabled" [ "$(in_ct systemctl is-enabled aiotask-tls.socket)" = disabled ]
in_ct systemctl stop aiotask
set_config handler echo
set_config tls-certificate server.pem
set_config tls-key server.key
set_config tls-client-ca clients-ca.pem
check "aiotask-tls.socket starts once enabled" in_ct systemctl enable --now aiotask-tls.socket
in_ct systemctl start aiotask
check "the service runs with its TLS socket and credentials" wait_until 20 status_line_is_live ||
    { journal_tail; stop_suite; return; }

# The credentials and the second socket change nothing of the sandbox: docs/security.md gives the packaged unit's
# rating, 1.1.
exposure_at_most() {
    local level
    level=$(in_ct systemd-analyze security aiotask.service --no-pager 2>&1 |
        sed -n 's/.*Overall exposure level for aiotask.service: \([0-9.]*\).*/\1/p')
    info "systemd-analyze security: exposure $level"
    [ -n "$level" ] && awk -v level="$level" -v most="$1" 'BEGIN { exit !(level <= most) }'
}
check "systemd-analyze security rates the service with its TLS credentials 1.1 at most" exposure_at_most 1.1

tls_submit() { in_ct aiotask submit --server "tls://127.0.0.1:$port" --tls-ca "$ct_tls/ca.pem" "$@"; }
tls_submit_is() {
    local expected=$1; shift
    local out
    out=$(tls_submit "$@" 2>&1) && [ "$out" = "$expected" ] || { info "tls submit $*: $out"; return 1; }
}
with_client=(--tls-certificate "$ct_tls/client.pem" --tls-key "$ct_tls/client.key")
check "a submit over TLS with a client certificate returns its task" tls_submit_is "tls one" "${with_client[@]}" "tls one"
refused_without_certificate() {
    local out
    ! out=$(tls_submit "refused" 2>&1) && grep -qi "handshake" <<<"$out" || { info "without a certificate: $out"; return 1; }
}
check "a client without a certificate is refused in the handshake" refused_without_certificate
check "the journal names the refused client and why" wait_until 5 journal_has "refusing TLS connection"
check "a plain submit on the Unix socket still works beside TLS" submit_is "plain" "plain"

# The key, in the credentials folder, is not readable by the handler's processes (hide-credentials, Landlock): the
# chaos handler's `read` is refused, while it reads a file elsewhere.
set_config handler chaos
reload_and_wait
key_read_denied() {
    local out
    ! out=$(in_ct aiotask submit "read /run/credentials/aiotask.service/server.key" 2>&1) &&
        grep -q "Permission denied" <<<"$out" || { info "read of the key: $out"; return 1; }
}
check "a handler process cannot read the TLS key in the credentials folder" key_read_denied
reads_elsewhere() { in_ct aiotask submit "read /etc/aiotask/aiotaskd.conf" >/dev/null; }
check "… while it reads a file elsewhere" reads_elsewhere
set_config handler echo
reload_and_wait

# Rotation. LoadCredential= copies the files when the service starts; to rotate without a restart, the service reads
# them where they are: a group the service joins (SupplementaryGroups=) may read the folder.
served_fingerprint() {
    openssl s_client -connect "127.0.0.1:$port" -servername localhost -CAfile "$tls/ca.pem" \
        -cert "$tls/client.pem" -key "$tls/client.key" </dev/null 2>/dev/null |
        openssl x509 -noout -fingerprint -sha256 2>/dev/null
}
fingerprint_of() { openssl x509 -noout -fingerprint -sha256 -in "$1"; }
in_ct groupadd --system aiotask-tls 2>/dev/null
mkdir -p "$ROOTDIR/etc/aiotask/tls-live"
install -m 0640 "$tls/server.pem" "$tls/server.key" "$tls/ca.pem" "$ROOTDIR/etc/aiotask/tls-live/"
in_ct chgrp -R aiotask-tls /etc/aiotask/tls-live
in_ct chmod 0750 /etc/aiotask/tls-live
cat >"$ROOTDIR/etc/systemd/system/aiotask.service.d/tls.conf" <<UNIT
[Service]
SupplementaryGroups=aiotask-tls
UNIT
in_ct systemctl daemon-reload
set_config tls-certificate /etc/aiotask/tls-live/server.pem
set_config tls-key /etc/aiotask/tls-live/server.key
set_config tls-client-ca /etc/aiotask/tls-live/ca.pem
in_ct systemctl restart aiotask
check "the service reads its TLS files from a folder its group may read" wait_until 20 status_line_is_live
check "it serves the first certificate" [ "$(served_fingerprint)" = "$(fingerprint_of "$tls/server.pem")" ]
local submitted_before
submitted_before=$(submitted_count) || submitted_before=0
in_ct aiotask bench --server "tls://127.0.0.1:$port" --tls-ca "$ct_tls/ca.pem" "${with_client[@]}" \
    --tasks 200000 --concurrency 16 --connections 4 --size 256 --json >"$WORKDIR/tls-bench.json" 2>"$WORKDIR/tls-bench.err" &
bench=$!
BACKGROUND+=("$bench")
# The rotation happens while the bench's four connections are open and busy.
bench_is_running() { [ "$(submitted_count)" -gt $((submitted_before + 500)) ]; }
check "the bench over TLS is under way" wait_until 20 bench_is_running
install -m 0640 "$tls/server2.pem" "$ROOTDIR/etc/aiotask/tls-live/server.pem.new"
install -m 0640 "$tls/server2.key" "$ROOTDIR/etc/aiotask/tls-live/server.key.new"
in_ct chgrp aiotask-tls /etc/aiotask/tls-live/server.pem.new /etc/aiotask/tls-live/server.key.new
mv "$ROOTDIR/etc/aiotask/tls-live/server.key.new" "$ROOTDIR/etc/aiotask/tls-live/server.key"
mv "$ROOTDIR/etc/aiotask/tls-live/server.pem.new" "$ROOTDIR/etc/aiotask/tls-live/server.pem"
check "systemctl reload under load re-reads the certificate" reload_and_wait
check "new connections get the new certificate" [ "$(served_fingerprint)" = "$(fingerprint_of "$tls/server2.pem")" ]
printf 'not a certificate\n' >"$ROOTDIR/etc/aiotask/tls-live/server.pem"
in_ct systemctl reload aiotask
check "a bad new certificate is refused and logged" \
    wait_until 10 journal_has "tls-certificate: /etc/aiotask/tls-live/server.pem is not a PEM certificate"
check "… the service keeps serving the one before" [ "$(served_fingerprint)" = "$(fingerprint_of "$tls/server2.pem")" ]
# Both reloads happened while the bench's connections were open: it is still running.
check "the bench over TLS ran through both reloads" kill -0 "$bench"
tls_bench_done() { ! kill -0 "$bench" 2>/dev/null; }
wait_until 120 tls_bench_done
wait "$bench"; rc=$?
BACKGROUND=()
info "bench over TLS: $(cat "$WORKDIR/tls-bench.json" "$WORKDIR/tls-bench.err")"
bench_all_done() { [ "$1" -eq 0 ] && jq -e '.failed == 0 and .tasks == 200000' "$WORKDIR/tls-bench.json" >/dev/null; }
check "200000 tasks over 4 TLS connections across the rotations: all done, none failed, no connection dropped" \
    bench_all_done $rc
check "the service kept its main process across the rotations" [ "$(service_prop NRestarts)" = 0 ]

# Back to the plain set-up for the phases after this one.
in_ct systemctl stop aiotask
in_ct systemctl disable --now aiotask-tls.socket
rm -f "$ROOTDIR/etc/systemd/system/aiotask.service.d/tls.conf"
in_ct systemctl daemon-reload
sh_ct "sed -i -E 's/^(tls-[a-z-]+ = .*)/# \\1/' /etc/aiotask/aiotaskd.conf"
in_ct systemctl start aiotask
check "the service runs on without TLS" wait_until 20 status_line_is_live
in_ct systemctl reset-failed aiotask.service
