// Process hardening: keeps decrypted secrets out of core files and away from other processes of
// the same user.
//
// Thread-safety: call from main() before any thread starts (or from one thread).
// disable_core_dumps() marks the process non-dumpable (prctl PR_SET_DUMPABLE 0: the kernel writes
// no core file for it, and its /proc/PID/mem, environ and friends become root's, out of reach of
// same-user processes and ptrace) and sets the soft RLIMIT_CORE to 0 as well. allow_core_dumps()
// undoes both, for a developer who configured `debug: {core_dumps: true}`. Both fail only if the
// kernel refuses, with the reason.
#pragma once

#include "core/result.h"

namespace tw {

Status disable_core_dumps();
Status allow_core_dumps();
// Whether this process may dump core now (PR_GET_DUMPABLE, and RLIMIT_CORE above 0).
bool core_dumps_enabled();

}  // namespace tw
