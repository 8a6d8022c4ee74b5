// Daemon: the pipeline `tokenwarden run` and the forced commands share, built in order:
// config -> logger -> key and store -> event loop -> HTTP transport -> provider clients ->
// policy and scheduler -> worker. Members are destroyed in the reverse order, so the worker goes
// before the clients and the transport, and the store is closed last.
//
// Thread-safety: everything runs on the one thread that calls io.run().
#pragma once

#include <memory>
#include <string>
#include <utility>  // before Boost.Asio: Boost 1.74 + g++ 12 + C++20
#include <vector>

#include <boost/asio/io_context.hpp>
#include <spdlog/logger.h>

#include "config/config.h"
#include "core/result.h"
#include "http/curl_transport.h"
#include "providers/provider.h"
#include "scheduler/clock.h"
#include "scheduler/policy.h"
#include "scheduler/scheduler.h"
#include "storage/sqlite_token_store.h"
#include "worker/worker.h"

namespace tw {

struct Daemon {
  SystemClock clock;
  boost::asio::io_context io;
  std::shared_ptr<spdlog::logger> log;
  std::unique_ptr<SqliteTokenStore> store;
  std::unique_ptr<CurlTransport> http;
  std::vector<std::unique_ptr<ProviderClient>> clients;
  std::unique_ptr<Policy> policy;
  std::unique_ptr<Scheduler> scheduler;
  std::unique_ptr<Worker> worker;

  // Builds everything from `config`. `owner` names this process in leases. Fails with the first
  // problem (a missing key or client secret, an unusable database).
  // `mode`: the daemon creates a missing database; the forced commands do not.
  static Result<std::unique_ptr<Daemon>> build(const Config& config,
                                               const std::string& credentials_directory,
                                               const std::string& owner,
                                               std::shared_ptr<spdlog::logger> log, OpenMode mode);

  // Runs until SIGTERM or SIGINT, then stops in order: no new work, requests in flight finish
  // within shutdown_grace, the transport shuts down, the store closes; a second signal stops at
  // once. Returns the exit code. All SQLite calls run on the loop thread: a database locked by
  // another process holds the loop for up to database.busy_timeout.
  int run(Seconds shutdown_grace);
};

// "host:pid", the lease owner of this process.
std::string process_owner(const std::string& prefix = "");

}  // namespace tw
