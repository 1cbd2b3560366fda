#ifndef C_SYSTEMD_SHIM_H
#define C_SYSTEMD_SHIM_H

// The location fields (CODE_FILE, …) are sent explicitly by the Swift log handler.
#define SD_JOURNAL_SUPPRESS_LOCATION 1

#include <sys/uio.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-journal.h>

#endif
