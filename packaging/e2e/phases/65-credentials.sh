# LoadCredential= puts a file in $CREDENTIALS_DIRECTORY; with hide-credentials = 1 (the default) no pool process
# can read it, through the unit's system-call filter (which must let Landlock's three calls through), while a file
# elsewhere stays readable. docs/security.md, "Secrets the handler cannot read".

phase "a handler cannot read the service's credentials (LoadCredential=, Landlock)"

local dropin=/etc/systemd/system/aiotask.service.d/e2e-credential.conf out rc

read_denied() { [ "$1" -eq 1 ] && grep -q 'cannot read /run/credentials/aiotask.service/probe: Permission denied' <<<"$2"; }
restart_with() {
    sh_ct "$1" && in_ct systemctl daemon-reload && in_ct systemctl restart aiotask.service \
        && wait_until 20 status_line_is_live
}

ensure_config handler chaos || { fail "cannot run the service with handler = chaos"; journal_tail; stop_suite; return; }
check "a credential is loaded (LoadCredential=probe:/etc/aiotask/e2e-probe) and the service restarted" restart_with \
    "printf 'secret' > /etc/aiotask/e2e-probe && chmod 600 /etc/aiotask/e2e-probe && mkdir -p ${dropin%/*} && printf '[Service]\nLoadCredential=probe:/etc/aiotask/e2e-probe\n' > $dropin"
check "aiotaskd logs that its pool cannot read the credentials" \
    journal_has "pool processes cannot read /run/credentials/aiotask.service (Landlock)"
check "no warning that Landlock is unavailable" journal_lacks "Landlock unavailable"
out=$(in_ct aiotask submit "read /run/credentials/aiotask.service/probe" 2>&1); rc=$?
info "aiotask submit 'read …/probe': exit $rc: $out"
check "a handler's read of the credential fails with Permission denied" read_denied "$rc" "$out"
check "a handler still reads /etc/aiotask/aiotaskd.conf" in_ct aiotask submit "read /etc/aiotask/aiotaskd.conf"
check "the drop-in and the credential are removed and the service restarted" restart_with \
    "rm -f $dropin /etc/aiotask/e2e-probe"
