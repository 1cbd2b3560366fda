# apt-get purge leaves no process, file, group or unit behind.

phase "apt-get purge"

no_aiotask_process() { ! in_ct pgrep -x 'aiotaskd|aiotask' >/dev/null; }
socket_is_gone() { ! is_active aiotask.socket && [ ! -e "$ROOTDIR/run/aiotask/aiotask.sock" ]; }
no_unit_files() { ! ls "$ROOTDIR"/lib/systemd/system/aiotask.* "$ROOTDIR"/etc/systemd/system/*/aiotask.* >/dev/null 2>&1; }

out=$(in_ct env DEBIAN_FRONTEND=noninteractive apt-get purge -y -q aiotask 2>&1)
check "apt-get purge -y aiotask" [ $? -eq 0 ] || printf '%s\n' "$out" | tail -n 10
check "no aiotask process is left" wait_until 10 no_aiotask_process
check "/etc/aiotask is gone" [ ! -e "$ROOTDIR/etc/aiotask" ]
check "the group aiotask is gone" sh_ct '! getent group aiotask >/dev/null'
check "aiotask.socket is gone" socket_is_gone
check "no unit files are left" no_unit_files
