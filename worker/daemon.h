// Daemon: the pipeline `tokenwarden run` and the forced commands share, built in order:
// config -> logger -> key and store -> event loop -> HTTP transport -> provider clients ->
// policy and scheduler -> worker -> status reporter. Members are destroyed in the reverse
// order, so the worker goes before the clients and the transport, and the store is closed last.
//
// Thread-safety: everything runs on the one thread that calls io.run().
#pragma once

#include <memory>
#include <string>
#include <utility>  // before Boost.Asio: Boost 1.74 + g++ 12 + C++20
#include <vector>

#include <boost/asio/io_context.hpp>
#include <spdlog/logger.h>

#include "api/local_api.h"
#include "config/config.h"
#include "core/result.h"
#include "http/curl_transport.h"
#include "notify/notifier.h"
#include "notify/reauth_notices.h"
#include "providers/provider.h"
#include "scheduler/clock.h"
#include "scheduler/policy.h"
#include "scheduler/scheduler.h"
#include "storage/open_store.h"
#include "worker/service.h"
#include "worker/status.h"
#include "worker/worker.h"

namespace tw {

struct Daemon {
  SystemClock clock;
  boost::asio::io_context io;
  Config config;  // as loaded (or last reloaded)
  std::string credentials_directory;
  std::shared_ptr<spdlog::logger> log;
  std::unique_ptr<TokenStore> store;
  std::unique_ptr<CurlTransport> http;
  std::vector<std::unique_ptr<ProviderClient>> clients;
  std::unique_ptr<Policy> policy;
  std::unique_ptr<Scheduler> scheduler;
  std::unique_ptr<Worker> worker;
  std::unique_ptr<StatusReporter> status;
  std::unique_ptr<ServiceNotifier> service;
  std::unique_ptr<Notifier> notifier;      // only with a notify: section, after enable_notices()
  std::unique_ptr<ReauthNotices> notices;  // feeds `notifier` from the database
  std::unique_ptr<LocalApi> api;           // after enable_api(), when configured

  // Builds everything from `config`. `owner` names this process in leases. `mode`: the daemon
  // creates a missing database; the forced commands do not. Fails with the first problem (a
  // missing key or client secret, an unusable database).
  static Result<std::unique_ptr<Daemon>> build(const Config& config,
                                               const std::string& credentials_directory,
                                               const std::string& owner,
                                               std::shared_ptr<spdlog::logger> log, OpenMode mode);

  // Builds the notifier of the notify: section (a no-op without one): tokens that need the
  // customer are announced by its command and/or webhook. The daemon calls it; the forced CLI
  // commands do not (the daemon's next scan announces what they find). Fails when the webhook
  // key cannot be read.
  Status enable_notices();

  // Starts the local API (api/local_api.h) on the socket systemd passed, else on api.socket; a
  // no-op when neither is there. Fails when the socket cannot be created, or when systemd passed
  // one but the api section allows nobody.
  Status enable_api();

  // Runs until SIGTERM or SIGINT, then stops in order: systemd is told STOPPING=1, no new work,
  // requests in flight finish within shutdown_grace, the transport shuts down, the final status
  // is written, the store closes; a second signal stops at once. SIGHUP reloads the config file.
  // Tells systemd READY=1 once running, and keeps its watchdog fed from the loop. Returns the
  // exit code. All SQLite calls run on the loop thread: a database locked by another process
  // holds the loop for up to database.busy_timeout.
  int run();

  // Re-reads config.source. Applies the log level, schedules and retry settings, provider limits
  // and status settings; names what else changed, which needs a restart. A config that does not
  // parse is logged and the running one kept.
  void reload();
};

// "host:pid", the lease owner of this process.
std::string process_owner(const std::string& prefix = "");

// The keys that differ between `a` and `b` and take effect only after a restart.
std::vector<std::string> keys_needing_restart(const Config& a, const Config& b);

}  // namespace tw
