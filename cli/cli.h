// The `tokenwarden` command line: one entry point the executable's main() calls.
//
// Thread-safety: call from one thread.
// Every command reads its configuration once, does its work and returns an exit code:
//   0 success, 1 operational failure (database, key, I/O), 2 bad usage or input (nothing changed),
//   3 no such token, 78 bad configuration (EX_CONFIG; the unit file stops restarting on it).
// Secrets are read only from stdin; nothing a command prints contains one.
#pragma once

#include <iosfwd>
#include <map>
#include <string>
#include <vector>

namespace tw {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitNotFound = 3;
inline constexpr int kExitConfig = 78;

// What a command may touch of its process, injected so tests can run commands in-process.
struct CliEnv {
  std::istream& in;
  std::ostream& out;
  std::ostream& err;
  bool stdin_is_tty = false;
  std::string credentials_directory;  // $CREDENTIALS_DIRECTORY, or empty
};

int run_cli(const std::vector<std::string>& args, CliEnv& env);

// `tokenwarden simulate`: a key, a database and tokens in a fresh directory, then weeks of
// schedule under a fake clock with simulated replies, in seconds. Defined in cli/simulate.cpp.
int run_simulation(const std::string& dir, int days, CliEnv& env);

}  // namespace tw
