#include "worker/daemon.h"

#include <csignal>
#include <random>

#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <unistd.h>

namespace tw {

namespace {}  // namespace

std::string process_owner(const std::string& prefix) {
  char host[256] = "unknown";
  gethostname(host, sizeof host - 1);
  return prefix + host + ":" + std::to_string(getpid());
}

Result<std::unique_ptr<Daemon>> Daemon::build(const Config& config,
                                              const std::string& credentials_directory,
                                              const std::string& owner,
                                              std::shared_ptr<spdlog::logger> log, OpenMode mode) {
  auto d = std::make_unique<Daemon>();
  d->log = std::move(log);

  auto store = open_token_store(config.database, config.key, credentials_directory, mode);
  if (!store) return store.error();
  d->store = std::move(*store);

  auto http = CurlTransport::create(d->io.get_executor(), config.http);
  if (!http) return http.error();
  d->http = std::move(*http);

  const ProvidersConfig& p = config.providers;
  if (p.meta.enabled) {
    auto c = make_meta_client(p.meta, *d->http, d->clock);
    if (!c) return c.error();
    d->clients.push_back(std::move(*c));
  }
  if (p.google.enabled) {
    auto c = make_google_client(p.google, *d->http, d->clock);
    if (!c) return c.error();
    d->clients.push_back(std::move(*c));
  }
  if (p.tiktok.enabled) {
    auto c = make_tiktok_client(p.tiktok, *d->http, d->clock);
    if (!c) return c.error();
    d->clients.push_back(std::move(*c));
  }

  auto rng = std::make_shared<std::mt19937_64>(std::random_device{}());
  d->policy = std::make_unique<Policy>(PolicyConfig::from(config), [rng] {
    return std::uniform_real_distribution<double>(0.0, 1.0)(*rng);
  });
  ProviderSet served;
  std::vector<ProviderClient*> clients;
  WorkerOptions options;
  options.scheduler = config.scheduler;
  options.max_in_flight = config.http.max_in_flight;
  options.summary_every = config.log.summary_every;
  for (const auto& c : d->clients) {
    served.push_back(c->provider());
    clients.push_back(c.get());
    options.limits[c->provider()] = config.providers.limits(c->provider());
  }
  d->scheduler =
      std::make_unique<Scheduler>(*d->store, *d->policy, d->clock, config.scheduler, owner, served);
  d->worker = std::make_unique<Worker>(
      d->io.get_executor(), *d->scheduler, *d->store, clients, d->clock, options, d->log,
      asio_timers(d->io.get_executor(), d->clock, config.scheduler.idle_poll));
  return d;
}

int Daemon::run(Seconds shutdown_grace) {
  boost::asio::signal_set signals(io, SIGINT, SIGTERM);
  auto name = [](int signal) { return signal == SIGTERM ? "SIGTERM" : "SIGINT"; };
  signals.async_wait(
      [this, shutdown_grace, &signals, name](const boost::system::error_code& ec, int signal) {
        if (ec) return;
        log->info("received {}: stopping (grace {}; a second signal stops at once)", name(signal),
                  format_duration(shutdown_grace));
        worker->stop(
            shutdown_grace,
            // Past the grace period, what is still in flight is cancelled: released, not failed.
            [this] { http->shutdown(); }, [this] { io.stop(); });
        signals.async_wait([this, name](const boost::system::error_code& ec2, int again) {
          if (ec2) return;
          log->warn(
              "received {} again: stopping now; tokens in hand are released when their "
              "leases expire",
              name(again));
          http->shutdown();
          io.stop();
        });
      });
  worker->start();
  io.run();
  log->info("stopped");
  return 0;
}

}  // namespace tw
