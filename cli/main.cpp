// tokenwarden: the executable. Everything it does lives in the library; main() only hands the
// process's arguments, streams and environment to the command line.
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include <malloc.h>
#include <unistd.h>

#include "cli/cli.h"
#include "core/process.h"

int main(int argc, char** argv) {
  // Before anything holds a secret: no core file, no same-user ptrace or /proc/PID/mem. The
  // config's debug.core_dumps can allow them again (Invocation::config()).
  if (auto st = tw::disable_core_dumps(); !st) {
    std::cerr << "tokenwarden: warning: cannot disable core dumps: " << st.error().message()
              << "\n";
  }
  // glibc gives memory freed at the top of the heap back at once (128 KiB threshold), so every
  // request of a sweep grew and shrank the heap with brk: three system calls a request, a third
  // of the daemon's CPU at 4,000 checks/s. Keep up to 32 MiB; freed secrets are wiped first.
  mallopt(M_TRIM_THRESHOLD, 32 << 20);
  mallopt(M_TOP_PAD, 4 << 20);
  std::vector<std::string> args(argv, argv + argc);
  const char* credentials = std::getenv("CREDENTIALS_DIRECTORY");
  tw::CliEnv env{std::cin, std::cout, std::cerr, isatty(STDIN_FILENO) == 1,
                 credentials != nullptr ? credentials : ""};
  return tw::run_cli(args, env);
}
