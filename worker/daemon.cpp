#include "worker/daemon.h"

#include <csignal>
#include <functional>
#include <random>

#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>
#include <unistd.h>

#include "core/log.h"
#include "providers/common.h"

namespace tw {

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
  d->config = config;
  d->credentials_directory = credentials_directory;

  auto store =
      open_token_store(config.storage, config.database, config.key, credentials_directory, mode);
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
  for (const GenericProviderConfig& g : p.generic) {
    if (!g.enabled) continue;
    auto c = make_generic_client(g, *d->http, d->clock);
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
  options.audit_retention = config.audit.retention;
  for (const auto& c : d->clients) {
    served.push_back(c->provider());
    clients.push_back(c.get());
    options.limits[c->provider()] = config.providers.limits(c->provider());
  }
  d->scheduler =
      std::make_unique<Scheduler>(*d->store, *d->policy, d->clock, config.scheduler, owner, served);
  const TimerFactory timers =
      asio_timers(d->io.get_executor(), d->clock, config.scheduler.idle_poll);
  d->worker = std::make_unique<Worker>(d->io.get_executor(), *d->scheduler, *d->store, clients,
                                       d->clock, options, d->log, timers);
  d->status = std::make_unique<StatusReporter>(*d->store, *d->worker, d->clock, config.status,
                                               owner, served, d->log, timers);
  d->service = std::make_unique<ServiceNotifier>(d->clock, timers);
  return d;
}

Status Daemon::enable_api() {
  const int fd = systemd_listen_fd();
  if (fd < 0 && config.api.socket.empty()) return {};
  if (config.api.allow_uids.empty() && config.api.allow_gids.empty()) {
    // Renewals matter more than the API: run without it, loudly.
    log->error(
        "systemd passed a socket for the local API, but api.allow_uids and "
        "api.allow_gids allow nobody: the API is off");
    ::close(fd);
    return {};
  }
  LocalApiOptions options;
  for (int uid : config.api.allow_uids)
    options.allow_uids.push_back(static_cast<uid_t>(uid));
  for (int gid : config.api.allow_gids)
    options.allow_gids.push_back(static_cast<gid_t>(gid));
  auto made = fd >= 0 ? LocalApi::adopt(io.get_executor(), fd, options, *store, *worker, clock, log)
                      : LocalApi::listen(io.get_executor(), config.api.socket, options, *store,
                                         *worker, clock, log);
  if (!made) return made.error();
  api = std::move(*made);
  log->info("local API on {}", api->where());
  return {};
}

Status Daemon::enable_notices() {
  if (!config.notify.enabled()) return {};
  Secret key;
  if (!config.notify.webhook_url.empty()) {
    auto k = providers::resolve_secret(config.notify.webhook_secret, "notify.webhook_secret");
    if (!k) return k.error();
    key = std::move(*k);
  }
  const TimerFactory timers = asio_timers(io.get_executor(), clock, config.scheduler.idle_poll);
  notifier = std::make_unique<Notifier>(io.get_executor(), config.notify, std::move(key), *http,
                                        clock, log, timers);
  notices = std::make_unique<ReauthNotices>(*store, *notifier, clock, log, timers);
  return {};
}

std::vector<std::string> keys_needing_restart(const Config& a, const Config& b) {
  std::vector<std::string> keys;
  auto differ = [&keys](const char* key, bool changed) {
    if (changed) keys.emplace_back(key);
  };
  // Whole sections are compared, so a key added to one later is covered without a change here.
  // reload() applies a provider's schedule and limits, retry, status, log.level and
  // log.summary_every; everything else is built into the running objects.
  auto fixed = [](auto provider) {
    provider.schedule = {};
    provider.limits = {};
    return provider;
  };
  differ("storage", a.storage != b.storage);
  differ("database", a.database != b.database);
  differ("key", a.key != b.key);
  differ("http", a.http != b.http);
  differ("scheduler", a.scheduler != b.scheduler);
  differ("providers.meta", fixed(a.providers.meta) != fixed(b.providers.meta));
  differ("providers.google", fixed(a.providers.google) != fixed(b.providers.google));
  differ("providers.tiktok", fixed(a.providers.tiktok) != fixed(b.providers.tiktok));
  auto fixed_generic = [&fixed](std::vector<GenericProviderConfig> all) {
    for (GenericProviderConfig& g : all) {
      g = fixed(g);
      g.renew_at_fraction.reset();
    }
    return all;
  };
  differ("providers.generic",
         fixed_generic(a.providers.generic) != fixed_generic(b.providers.generic));
  differ("log.format", a.log.format != b.log.format);
  differ("notify", a.notify != b.notify);
  differ("api", a.api != b.api);
  differ("audit", a.audit != b.audit);
  differ("debug", a.debug != b.debug);
  return keys;
}

void Daemon::reload() {
  service->reloading();
  auto fresh = load_config(config.source);
  if (!fresh) {
    log->error("reload failed, keeping the running configuration: {}", fresh.error().message());
    service->ready(status->summary());
    return;
  }
  reconfigure_logger(*log, fresh->log);
  // The generic providers whose clients run, with the fresh schedules and limits: a new provider
  // or a changed endpoint needs a restart, and the policy must not schedule checks the running
  // client cannot do.
  std::vector<GenericProviderConfig> generic = config.providers.generic;
  for (GenericProviderConfig& g : generic) {
    if (const GenericProviderConfig* f = fresh->providers.generic_named(g.provider)) {
      g.schedule = f->schedule;
      g.limits = f->limits;
      g.renew_at_fraction = f->renew_at_fraction;
    }
  }
  Config for_policy = *fresh;
  for_policy.providers.generic = generic;
  policy->reconfigure(PolicyConfig::from(for_policy));
  std::map<Provider, ProviderLimits> limits;
  for (const auto& c : clients)
    limits[c->provider()] = for_policy.providers.limits(c->provider());
  worker->set_limits(limits);
  worker->set_summary_every(fresh->log.summary_every);
  status->reconfigure(fresh->status);
  const std::vector<std::string> pending = keys_needing_restart(config, *fresh);
  std::string names;
  for (const auto& k : pending)
    names += (names.empty() ? "" : ", ") + k;
  // What was applied becomes the running config; what needs a restart keeps its running value.
  Config applied = config;
  applied.log.level = fresh->log.level;
  applied.log.summary_every = fresh->log.summary_every;
  applied.providers.meta.schedule = fresh->providers.meta.schedule;
  applied.providers.google.schedule = fresh->providers.google.schedule;
  applied.providers.tiktok.schedule = fresh->providers.tiktok.schedule;
  applied.providers.meta.limits = fresh->providers.meta.limits;
  applied.providers.google.limits = fresh->providers.google.limits;
  applied.providers.tiktok.limits = fresh->providers.tiktok.limits;
  applied.providers.generic = generic;
  applied.retry = fresh->retry;
  applied.status = fresh->status;
  config = applied;
  if (pending.empty()) {
    log->info("configuration reloaded from {}", config.source);
  } else {
    log->warn("configuration reloaded from {}; changed but needing a restart: {}", config.source,
              names);
  }
  service->ready(status->summary());
}

int Daemon::run() {
  const Seconds shutdown_grace = config.scheduler.shutdown_grace;
  boost::asio::signal_set hangup(io, SIGHUP);
  std::function<void()> on_hangup = [this, &hangup, &on_hangup] {
    hangup.async_wait([this, &on_hangup](const boost::system::error_code& ec, int) {
      if (ec) return;
      log->info("received SIGHUP: reloading {}", config.source);
      reload();
      on_hangup();
    });
  };
  on_hangup();
  boost::asio::signal_set signals(io, SIGINT, SIGTERM);
  auto name = [](int signal) { return signal == SIGTERM ? "SIGTERM" : "SIGINT"; };
  signals.async_wait([this, shutdown_grace, &signals, &hangup, name](
                         const boost::system::error_code& ec, int signal) {
    if (ec) return;
    log->info("received {}: stopping (grace {}; a second signal stops at once)", name(signal),
              format_duration(shutdown_grace));
    service->stopping();
    hangup.cancel();
    // Notices not finished stay unmarked in the database and are sent after the restart.
    if (notices) notices->stop();
    if (notifier) notifier->shutdown();
    if (api) api->stop();
    worker->stop(
        shutdown_grace,
        // Past the grace period, what is still in flight is cancelled: released, not failed.
        [this] { http->shutdown(); },
        [this] {
          status->stop();
          service->stop_watchdog();
          if (auto st = status->write_now(); !st) {
            log->error("cannot write the final status: {}", st.error().message());
          }
          io.stop();
        });
    signals.async_wait([this, name](const boost::system::error_code& ec2, int again) {
      if (ec2) return;
      log->warn(
          "received {} again: stopping now; tokens in hand are released when their leases "
          "expire",
          name(again));
      http->shutdown();
      worker->abort();  // received rotated secrets are written before the loop stops
      io.stop();
    });
  });
  // Only the daemon reports: a forced `refresh` or `check` builds the same pipeline but must not
  // overwrite the daemon's status file with its own pid and counts.
  worker->set_on_step([this](const StepReport& step) {
    status->on_step(step);
    const TokenState now = step.record.state;
    if (notices && now != step.before &&
        (now == TokenState::kNeedsReauth || now == TokenState::kRevoked)) {
      notices->poke();
    }
  });
  status->on_written = [this](const std::string& summary) { service->status(summary); };
  log->info("tokens in {}", store->describe());
  worker->start();
  status->start();
  if (notices) notices->start();
  service->ready(status->summary());
  if (auto period = service->start_watchdog(); period.count() > 0) {
    log->info("systemd watchdog: pinging every {} ms",
              std::chrono::duration_cast<std::chrono::milliseconds>(period).count() / 2);
  }
  io.run();
  log->info("stopped");
  return 0;
}

}  // namespace tw
