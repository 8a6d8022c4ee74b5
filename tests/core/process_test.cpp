// Core dumps are off unless allowed. Each case runs in a forked child, so the test process itself
// stays as it was.
#include "core/process.h"

#include <gtest/gtest.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

namespace tw {
namespace {

// Runs `body` in a child; its exit status (0: every check held).
template <class F>
int in_child(F body) {
  const pid_t pid = fork();
  if (pid == 0) _exit(body());
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 100;
}

TEST(Process, DisablingCoreDumpsMakesTheProcessNonDumpableWithACoreLimitOfZero) {
  EXPECT_EQ(in_child([] {
              if (!disable_core_dumps()) return 1;
              if (prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != 0) return 2;
              rlimit limit{};
              if (getrlimit(RLIMIT_CORE, &limit) != 0 || limit.rlim_cur != 0) return 3;
              if (core_dumps_enabled()) return 4;
              return 0;
            }),
            0);
}

TEST(Process, AllowingThemAgainRestoresBoth) {
  EXPECT_EQ(in_child([] {
              rlimit before{};
              getrlimit(RLIMIT_CORE, &before);
              if (!disable_core_dumps() || !allow_core_dumps()) return 1;
              if (prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != 1) return 2;
              rlimit after{};
              if (getrlimit(RLIMIT_CORE, &after) != 0 || after.rlim_cur != before.rlim_max)
                return 3;
              return 0;
            }),
            0);
}

}  // namespace
}  // namespace tw
