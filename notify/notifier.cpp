#include "notify/notifier.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <deque>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <fcntl.h>
#include <nlohmann/json.hpp>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/fs.h"
#include "core/log.h"

namespace tw {

namespace {

enum class Channel { kCommand, kWebhook };

std::string_view to_string(Channel c) {
  return c == Channel::kCommand ? "command" : "webhook";
}

std::string event_name(TokenState state) {
  return "token." + std::string(to_string(state));
}

// What is left of one notify(): its deliveries not yet finished, and who to tell when none is.
struct Pending {
  int deliveries = 0;  // not yet delivered or given up
  bool all_delivered = true;
  Notifier::Done done;  // may be empty
};

struct Delivery {
  Channel channel;
  ReauthEvent event;
  std::string body;  // the webhook's JSON, the same on every attempt
  std::shared_ptr<Pending> of;
  int attempts = 0;  // started so far
};

// How an attempt ended.
enum class Verdict {
  kDelivered,
  kRetry,    // may succeed later
  kRefused,  // will not succeed by retrying
};

struct AttemptResult {
  Verdict verdict = Verdict::kRetry;
  std::string what;                   // one line for the log, no secret
  std::optional<Millis> retry_after;  // the receiver's Retry-After, within max_backoff
};

// ---------------------------------------------------------------------------------------------
// The command.

// A started command. The wait for its exit owns it, so that it is reaped even after the Notifier
// has gone; it is killed there and then (see ~Notifier).
struct Child {
  Child(const boost::asio::any_io_executor& executor, pid_t pid, int pidfd)
      : pid(pid), pidfd(executor, pidfd) {}
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  // Only when the executor is destroyed with the wait pending: kill and reap here (SIGKILL makes
  // the wait short).
  ~Child() {
    if (reaped) return;
    kill_group();
    while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
  }

  // The command and anything it started: it runs in its own process group.
  void kill_group() const {
    if (!reaped) ::kill(-pid, SIGKILL);
  }

  pid_t pid;
  boost::asio::posix::stream_descriptor pidfd;  // readable once the process has exited
  bool reaped = false;
};

// Calls `done` with the wait status once `child` has exited and been reaped, or with nullopt when
// the status is lost (another waiter reaped it).
void await_exit(const std::shared_ptr<Child>& child, std::function<void(std::optional<int>)> done) {
  child->pidfd.async_wait(
      boost::asio::posix::stream_descriptor::wait_read,
      [child, done = std::move(done)](const boost::system::error_code& ec) mutable {
        int status = 0;
        const pid_t r = ::waitpid(child->pid, &status, WNOHANG);
        if (r == child->pid) {
          child->reaped = true;
          return done(status);
        }
        if (r < 0 && errno != EINTR) {
          child->reaped = true;  // ECHILD: nothing of ours left to reap
          return done(std::nullopt);
        }
        if (ec) {
          // The pidfd cannot be waited on (cannot happen after a successful pidfd_open): kill and
          // reap it here rather than leave a process behind.
          child->kill_group();
          while (::waitpid(child->pid, &status, 0) < 0 && errno == EINTR) {
          }
          child->reaped = true;
          return done(status);
        }
        await_exit(child, std::move(done));  // woken before the exit: wait again
      });
}

std::vector<std::string> command_environment(const ReauthEvent& e) {
  return {
      "PATH=/usr/sbin:/usr/bin:/sbin:/bin",
      "LANG=C.UTF-8",
      "TW_TOKEN_ID=" + e.token_id,
      "TW_PROVIDER=" + std::string(to_string(e.provider)),
      "TW_KIND=" + std::string(to_string(e.kind)),
      "TW_WORKSPACE=" + e.workspace_id,
      "TW_ACCOUNT=" + e.account_id,
      "TW_STATE=" + std::string(to_string(e.state)),
      "TW_REASON=" + e.reason,
      "TW_AT=" + format_time(e.at),
  };
}

// posix_spawn's attribute and file-action objects, destroyed at scope exit.
class SpawnSetup {
 public:
  SpawnSetup() {
    posix_spawnattr_init(&attr_);
    posix_spawn_file_actions_init(&actions_);
  }
  ~SpawnSetup() {
    posix_spawnattr_destroy(&attr_);
    posix_spawn_file_actions_destroy(&actions_);
  }
  SpawnSetup(const SpawnSetup&) = delete;
  SpawnSetup& operator=(const SpawnSetup&) = delete;

  // Returns 0 or an errno value.
  int prepare() {
    // Its own process group, so a timeout kills what it started too; signal mask and dispositions
    // as a fresh process has them (the daemon blocks or ignores some).
    sigset_t none;
    sigset_t defaults;
    sigemptyset(&none);
    sigemptyset(&defaults);
    for (int sig : {SIGPIPE, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGCHLD, SIGUSR1, SIGUSR2, SIGALRM,
                    SIGXFSZ, SIGTSTP, SIGTTIN, SIGTTOU}) {
      sigaddset(&defaults, sig);
    }
    int rc = posix_spawnattr_setflags(
        &attr_, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    if (rc == 0) rc = posix_spawnattr_setpgroup(&attr_, 0);
    if (rc == 0) rc = posix_spawnattr_setsigmask(&attr_, &none);
    if (rc == 0) rc = posix_spawnattr_setsigdefault(&attr_, &defaults);
    // Nothing in, nothing out: its output is not ours to log. No descriptor of ours leaks in.
    if (rc == 0) rc = posix_spawn_file_actions_addopen(&actions_, 0, "/dev/null", O_RDONLY, 0);
    if (rc == 0) rc = posix_spawn_file_actions_addopen(&actions_, 1, "/dev/null", O_WRONLY, 0);
    if (rc == 0) rc = posix_spawn_file_actions_adddup2(&actions_, 1, 2);
    if (rc == 0) rc = posix_spawn_file_actions_addclosefrom_np(&actions_, 3);
    if (rc == 0) rc = posix_spawn_file_actions_addchdir_np(&actions_, "/");
    return rc;
  }

  const posix_spawnattr_t* attr() const { return &attr_; }
  const posix_spawn_file_actions_t* actions() const { return &actions_; }

 private:
  posix_spawnattr_t attr_{};
  posix_spawn_file_actions_t actions_{};
};

// Starts `path` with exactly `env`; fails with a message naming the step.
Result<std::shared_ptr<Child>> spawn_command(const boost::asio::any_io_executor& executor,
                                             const std::string& path,
                                             std::vector<std::string> env) {
  SpawnSetup setup;
  if (int rc = setup.prepare(); rc != 0) {
    return Error(Errc::kInternal, "cannot prepare to start it: " + errno_text(rc));
  }
  std::string argv0 = path;
  std::array<char*, 2> argv{argv0.data(), nullptr};
  std::vector<char*> envp;
  envp.reserve(env.size() + 1);
  for (std::string& e : env)
    envp.push_back(e.data());
  envp.push_back(nullptr);

  pid_t pid = 0;
  if (int rc = ::posix_spawn(&pid, path.c_str(), setup.actions(), setup.attr(), argv.data(),
                             envp.data());
      rc != 0) {
    return Error(Errc::kIo, "cannot start it: " + errno_text(rc));
  }
  const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
  if (pidfd < 0) {
    const int err = errno;
    ::kill(-pid, SIGKILL);  // it cannot be awaited without blocking: stop it at once
    while (::waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
    return Error(Errc::kInternal, "cannot await it (pidfd_open, Linux 5.3+): " + errno_text(err));
  }
  return std::make_shared<Child>(executor, pid, pidfd);
}

AttemptResult command_result(std::optional<int> status, bool timed_out, Millis timeout) {
  if (!status) return {Verdict::kRetry, "its exit status was lost (reaped elsewhere)", {}};
  if (WIFEXITED(*status) && WEXITSTATUS(*status) == 0) return {Verdict::kDelivered, "exit 0", {}};
  if (timed_out) {
    return {Verdict::kRetry, "timed out after " + format_duration(timeout) + " and was killed", {}};
  }
  if (WIFEXITED(*status)) {
    return {Verdict::kRetry, "exited with status " + std::to_string(WEXITSTATUS(*status)), {}};
  }
  if (WIFSIGNALED(*status)) {
    return {Verdict::kRetry, "killed by signal " + std::to_string(WTERMSIG(*status)), {}};
  }
  return {Verdict::kRetry, "ended with wait status " + std::to_string(*status), {}};
}

// ---------------------------------------------------------------------------------------------
// The webhook.

std::string webhook_body(const ReauthEvent& e) {
  const nlohmann::json body{
      {"event", event_name(e.state)},      {"token_id", e.token_id},
      {"provider", to_string(e.provider)}, {"kind", to_string(e.kind)},
      {"workspace_id", e.workspace_id},    {"account_id", e.account_id},
      {"state", to_string(e.state)},       {"reason", e.reason},
      {"at", format_time(e.at)},
  };
  // Replace, never throw, on invalid UTF-8 in a reason.
  return body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// "sha256=" + lowercase hex HMAC-SHA256(key, timestamp + "." + body).
std::string webhook_signature(const Secret& key, std::string_view timestamp,
                              std::string_view body) {
  std::string signed_text;
  signed_text.reserve(timestamp.size() + 1 + body.size());
  signed_text.append(timestamp).append(".").append(body);
  std::array<unsigned char, EVP_MAX_MD_SIZE> mac{};
  unsigned int mac_len = 0;
  const std::string_view k = key.reveal();
  if (HMAC(EVP_sha256(), k.data(), static_cast<int>(k.size()),
           reinterpret_cast<const unsigned char*>(signed_text.data()), signed_text.size(),
           mac.data(), &mac_len) == nullptr) {
    die("HMAC-SHA256 failed");
  }
  return "sha256=" + to_hex(std::span<const unsigned char>(mac.data(), mac_len));
}

// scheme://host[:port] of `url`: safe for HttpRequest::log_url (a path may be a credential).
std::string origin_of(std::string_view url) {
  const std::size_t scheme_end = url.find("://");
  if (scheme_end == std::string_view::npos) return "(webhook)";
  const std::string_view scheme = url.substr(0, scheme_end + 3);
  std::string_view authority = url.substr(scheme_end + 3);
  authority = authority.substr(0, authority.find_first_of("/?#"));
  // user:password@ is a credential too.
  if (const std::size_t at = authority.rfind('@'); at != std::string_view::npos) {
    authority.remove_prefix(at + 1);
  }
  return std::string(scheme) + std::string(authority);
}

// Retry-After in seconds (the HTTP-date form is not used by webhook receivers in practice).
std::optional<Millis> retry_after(const HttpResponse& r, Seconds max_backoff) {
  auto it = r.headers.find("retry-after");
  if (it == r.headers.end()) return std::nullopt;
  std::int64_t seconds = -1;
  const std::string& v = it->second;
  auto [ptr, ec] = std::from_chars(v.data(), v.data() + v.size(), seconds);
  if (ec != std::errc() || ptr != v.data() + v.size() || seconds < 0) return std::nullopt;
  if (seconds > max_backoff.count()) return std::nullopt;
  return Millis(Seconds(seconds));
}

AttemptResult webhook_result(const HttpResponse& r, Seconds max_backoff) {
  if (r.error == TransportError::kCancelled) {
    return {Verdict::kRefused, "cancelled: the HTTP transport has shut down", {}};
  }
  if (r.error != TransportError::kNone) {
    return {Verdict::kRetry, std::string(to_string(r.error)) + ": " + r.error_message, {}};
  }
  const std::string what = "HTTP " + std::to_string(r.status);
  if (r.status >= 200 && r.status < 300) return {Verdict::kDelivered, what, {}};
  if (r.status == 408 || r.status == 429 || r.status >= 500) {
    return {Verdict::kRetry, what, retry_after(r, max_backoff)};
  }
  return {Verdict::kRefused, what + " (the receiver refuses it; not retried)", {}};
}

Notifier::Random default_random() {
  return [engine = std::make_shared<std::mt19937_64>(std::random_device{}())] {
    return std::uniform_real_distribution<double>(0.0, 1.0)(*engine);
  };
}

}  // namespace

// ---------------------------------------------------------------------------------------------

struct Notifier::Impl : std::enable_shared_from_this<Impl> {
  // One attempt in progress.
  struct Running {
    std::shared_ptr<Delivery> delivery;
    std::shared_ptr<Child> child;         // commands only
    std::unique_ptr<WakeTimer> deadline;  // commands only: command_timeout
    bool timed_out = false;
  };

  Impl(boost::asio::any_io_executor executor, const NotifyConfig& config, Secret key,
       HttpTransport& http, const Clock& clock, std::shared_ptr<spdlog::logger> log,
       TimerFactory timers, Random random)
      : executor(std::move(executor)),
        config(config),
        key(std::move(key)),
        http(http),
        clock(clock),
        log(std::move(log)),
        timers(std::move(timers)),
        random(random ? std::move(random) : default_random()),
        retry_timer(this->timers()) {}

  ~Impl() { stop(); }
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  void notify(const ReauthEvent& e, Done done) {
    if (shut_down) {
      log->warn("notify: {} for {} arrived after shutdown: not sent", event_name(e.state),
                e.token_id);
      return;
    }
    auto of = std::make_shared<Pending>(Pending{0, true, std::move(done)});
    if (!config.command.empty()) {
      ready.push_back(std::make_shared<Delivery>(Delivery{Channel::kCommand, e, {}, of, 0}));
      ++of->deliveries;
    }
    if (!config.webhook_url.empty()) {
      ready.push_back(
          std::make_shared<Delivery>(Delivery{Channel::kWebhook, e, webhook_body(e), of, 0}));
      ++of->deliveries;
    }
    if (of->deliveries == 0 && of->done) {  // nothing configured: nothing to wait for
      boost::asio::post(executor, [done = std::move(of->done)] { done(true); });
    }
    if (ready.empty() || pump_posted) return;
    pump_posted = true;
    boost::asio::post(executor, [weak = weak_from_this()] {
      if (auto self = weak.lock()) {
        self->pump_posted = false;
        self->pump();
      }
    });
  }

  std::size_t pending() const { return ready.size() + running.size() + waiting.size(); }

  void shutdown() {
    if (shut_down) return;
    const std::size_t abandoned = pending();
    stop();
    if (abandoned > 0) {
      log->warn("notify: shutting down; {} delivery(ies) not done are abandoned", abandoned);
    } else {
      log->info("notify: shutting down; every delivery is done");
    }
  }

  // Kills running commands and forgets everything.
  void stop() {
    shut_down = true;
    for (auto& [id, r] : running) {
      if (r.child) r.child->kill_group();  // its wait reaps it
    }
    running.clear();
    ready.clear();
    waiting.clear();
    retry_timer->cancel();
  }

  // Starts what is ready while there are free slots.
  void pump() {
    while (!shut_down && !ready.empty() &&
           running.size() < static_cast<std::size_t>(config.max_in_flight)) {
      auto d = std::move(ready.front());
      ready.pop_front();
      ++d->attempts;
      const std::uint64_t id = next_attempt++;
      if (d->channel == Channel::kCommand) {
        start_command(id, std::move(d));
      } else {
        start_webhook(id, std::move(d));
      }
    }
  }

  void start_command(std::uint64_t id, std::shared_ptr<Delivery> d) {
    auto child = spawn_command(executor, config.command, command_environment(d->event));
    if (!child.ok()) return finish(d, {Verdict::kRetry, child.error().message(), {}});
    Running& r = running[id];
    r.delivery = std::move(d);
    r.child = std::move(child).value();
    r.deadline = timers();
    r.deadline->arm(clock.system_now() + config.command_timeout, [this, id] {
      auto it = running.find(id);
      if (it == running.end()) return;
      it->second.timed_out = true;
      it->second.child->kill_group();  // the exit wait then ends the attempt
    });
    await_exit(r.child, [weak = weak_from_this(), id](std::optional<int> status) {
      auto self = weak.lock();
      if (!self) return;
      auto it = self->running.find(id);
      if (it == self->running.end()) return;  // shut down meanwhile
      auto delivery = std::move(it->second.delivery);
      const bool timed_out = it->second.timed_out;
      self->running.erase(it);
      self->finish(delivery, command_result(status, timed_out, self->config.command_timeout));
      self->pump();
    });
  }

  void start_webhook(std::uint64_t id, std::shared_ptr<Delivery> d) {
    const std::string timestamp = std::to_string(to_unix(clock.now()));
    HttpRequest request;
    request.method = "POST";
    request.url = config.webhook_url;
    request.log_url = origin_of(config.webhook_url);
    request.headers = {
        {"Content-Type", "application/json"},
        {"X-Tokenwarden-Timestamp", timestamp},
        {"X-Tokenwarden-Signature", webhook_signature(key, timestamp, d->body)},
        {"X-Tokenwarden-Event-Id", d->event.token_id + "-" + std::to_string(to_unix(d->event.at))},
    };
    request.body = d->body;
    running[id].delivery = std::move(d);
    http.send(std::move(request), [weak = weak_from_this(), id](HttpResponse response) {
      auto self = weak.lock();
      if (!self) return;
      auto it = self->running.find(id);
      if (it == self->running.end()) return;  // shut down meanwhile
      auto delivery = std::move(it->second.delivery);
      self->running.erase(it);
      wipe(response.body);  // a receiver's reply is not ours to keep
      self->finish(delivery, webhook_result(response, self->config.max_backoff));
      self->pump();
    });
  }

  // Logs the outcome of an attempt and schedules the next one, if any.
  void finish(const std::shared_ptr<Delivery>& d, const AttemptResult& result) {
    const ReauthEvent& e = d->event;
    const std::string who = std::string(to_string(d->channel)) + " of " + event_name(e.state) +
                            " for " + e.token_id + " (" + std::string(to_string(e.provider)) +
                            ", workspace " + e.workspace_id + ")";
    const bool retry = result.verdict == Verdict::kRetry && d->attempts < config.max_attempts;
    // journalctl -u tokenwarden TOKEN_ID=... shows the notices beside the renewals and checks.
    ScopedLogFields fields({{"TOKEN_ID", e.token_id},
                            {"PROVIDER", std::string(to_string(e.provider))},
                            {"WORKSPACE", e.workspace_id},
                            {"OPERATION", "notify"},
                            {"NOTIFY_CHANNEL", std::string(to_string(d->channel))},
                            {"OUTCOME", result.verdict == Verdict::kDelivered ? "ok"
                                        : retry                               ? "retrying"
                                                                              : "failed"}});
    if (result.verdict == Verdict::kDelivered) {
      log->info("notified {} on attempt {}", who, d->attempts);
      return settle(*d->of, true);
    }
    if (result.verdict == Verdict::kRefused || d->attempts >= config.max_attempts) {
      log->error("gave up notifying {} after {} attempt(s): {}", who, d->attempts, result.what);
      return settle(*d->of, false);
    }
    const Millis delay = result.retry_after ? *result.retry_after : backoff(d->attempts);
    log->warn("notifying {} failed on attempt {} of {}: {}; retrying in {}", who, d->attempts,
              config.max_attempts, result.what, format_duration(delay));
    waiting.emplace(clock.system_now() + delay, d);
    arm_retry_timer();
  }

  // One delivery of `p` is finished; the last one calls its Done.
  static void settle(Pending& p, bool delivered) {
    p.all_delivered = p.all_delivered && delivered;
    if (--p.deliveries > 0 || !p.done) return;
    auto done = std::move(p.done);
    done(p.all_delivered);
  }

  // initial_backoff * 2^(failures-1), capped at max_backoff, times a factor in [0.8, 1.0].
  Millis backoff(int failures) const {
    Millis d = config.initial_backoff;
    const Millis cap = config.max_backoff;
    for (int i = 1; i < failures && d < cap; ++i)
      d *= 2;
    d = std::min(d, cap);
    const double factor = 1.0 - 0.2 * std::clamp(random(), 0.0, 1.0);
    return Millis(std::llround(static_cast<double>(d.count()) * factor));
  }

  void arm_retry_timer() {
    if (waiting.empty()) return retry_timer->cancel();
    retry_timer->arm(waiting.begin()->first, [this] { retry_due(); });
  }

  // Moves the retries that are due to the back of the queue.
  void retry_due() {
    const WallTime now = clock.system_now();
    while (!waiting.empty() && waiting.begin()->first <= now) {
      ready.push_back(std::move(waiting.begin()->second));
      waiting.erase(waiting.begin());
    }
    arm_retry_timer();
    pump();
  }

  boost::asio::any_io_executor executor;
  const NotifyConfig config;
  const Secret key;
  HttpTransport& http;
  const Clock& clock;
  std::shared_ptr<spdlog::logger> log;
  TimerFactory timers;
  Random random;

  std::deque<std::shared_ptr<Delivery>> ready;                 // waiting for a slot, FIFO
  std::map<std::uint64_t, Running> running;                    // by attempt number
  std::multimap<WallTime, std::shared_ptr<Delivery>> waiting;  // backing off until
  std::unique_ptr<WakeTimer> retry_timer;                      // for waiting.begin()
  std::uint64_t next_attempt = 0;
  bool pump_posted = false;
  bool shut_down = false;
};

Notifier::Notifier(boost::asio::any_io_executor executor, const NotifyConfig& config,
                   Secret webhook_key, HttpTransport& http, const Clock& clock,
                   std::shared_ptr<spdlog::logger> log, TimerFactory timers, Random random) {
  if (!config.webhook_url.empty() && webhook_key.empty()) {
    die("Notifier: a webhook_url needs its webhook_secret (the config parser requires it)");
  }
  impl_ = std::make_shared<Impl>(std::move(executor), config, std::move(webhook_key), http, clock,
                                 std::move(log), std::move(timers), std::move(random));
}

Notifier::~Notifier() = default;

void Notifier::notify(const ReauthEvent& event, Done done) {
  impl_->notify(event, std::move(done));
}

std::size_t Notifier::pending() const {
  return impl_->shut_down ? 0 : impl_->pending();
}

std::size_t Notifier::in_flight() const {
  return impl_->running.size();
}

void Notifier::shutdown() {
  impl_->shutdown();
}

}  // namespace tw
