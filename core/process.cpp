#include "core/process.h"

#include <cerrno>
#include <string>

#include <sys/prctl.h>
#include <sys/resource.h>

#include "core/fs.h"

namespace tw {

namespace {

Status set_core_limit(bool allow) {
  rlimit limit{};
  if (getrlimit(RLIMIT_CORE, &limit) != 0) {
    return Error(Errc::kIo, "getrlimit(RLIMIT_CORE): " + errno_text(errno));
  }
  limit.rlim_cur = allow ? limit.rlim_max : 0;
  if (setrlimit(RLIMIT_CORE, &limit) != 0) {
    return Error(Errc::kIo, "setrlimit(RLIMIT_CORE): " + errno_text(errno));
  }
  return Ok();
}

Status set_dumpable(bool allow) {
  if (prctl(PR_SET_DUMPABLE, allow ? 1 : 0, 0, 0, 0) != 0) {
    return Error(Errc::kIo, "prctl(PR_SET_DUMPABLE): " + errno_text(errno));
  }
  return Ok();
}

}  // namespace

Status disable_core_dumps() {
  if (auto st = set_dumpable(false); !st) return st;
  return set_core_limit(false);
}

Status allow_core_dumps() {
  if (auto st = set_core_limit(true); !st) return st;
  return set_dumpable(true);
}

bool core_dumps_enabled() {
  rlimit limit{};
  return prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 1 && getrlimit(RLIMIT_CORE, &limit) == 0 &&
         limit.rlim_cur > 0;
}

}  // namespace tw
