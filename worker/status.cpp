#include "worker/status.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <sstream>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/fs.h"

namespace tw {

namespace {

constexpr std::size_t kReauthListLimit = 1000;

std::int64_t minute_of(WallTime t) {
  return std::chrono::duration_cast<std::chrono::minutes>(t.time_since_epoch()).count();
}

std::string iso(WallTime t) {
  return format_time(std::chrono::floor<Seconds>(t));
}

std::string label(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

}  // namespace

// --- OutcomeWindow
// --------------------------------------------------------------------------------

namespace {

// The upper bound of latency slot `i`, in ms: 2^(i/4) - 1, so slot 0 holds 0 ms.
double slot_bound(std::size_t i) {
  return std::exp2(static_cast<double>(i) / 4.0) - 1.0;
}

std::size_t latency_slot(std::chrono::milliseconds latency) {
  const double ms = static_cast<double>(std::max<std::int64_t>(latency.count(), 0));
  const auto i = static_cast<std::size_t>(std::ceil(4.0 * std::log2(ms + 1.0)));
  return std::min(i, OutcomeWindow::kLatencySlots - 1);
}

std::size_t op_index(Operation op) {
  return op == Operation::kRefresh ? 0 : 1;
}

}  // namespace

void OutcomeWindow::record(Operation op, bool ok, ErrorClass error_class,
                           std::chrono::milliseconds latency, WallTime now) {
  const std::int64_t minute = minute_of(now);
  Bucket& b = buckets_[static_cast<std::size_t>(minute % 60)];
  if (b.minute != minute) {
    b.minute = minute;
    b.counts.clear();
    b.latency = {};
  }
  ++b.counts[{op, ok ? ErrorClass::kNone : error_class}];
  ++b.latency[op_index(op)][latency_slot(latency)];
}

nlohmann::json OutcomeWindow::last_hour(WallTime now) const {
  const std::int64_t minute = minute_of(now);
  nlohmann::json out;
  for (Operation op : {Operation::kRefresh, Operation::kCheck}) {
    const char* key = op == Operation::kRefresh ? "refreshes" : "checks";
    out[key] = {{"ok", 0}, {"failed", nlohmann::json::object()}};
  }
  std::array<std::array<std::uint64_t, kLatencySlots>, 2> latency{};
  for (const Bucket& b : buckets_) {
    if (b.minute < 0 || b.minute <= minute - 60 || b.minute > minute) continue;
    for (std::size_t op = 0; op < 2; ++op) {
      for (std::size_t i = 0; i < kLatencySlots; ++i)
        latency[op][i] += b.latency[op][i];
    }
    for (const auto& [what, n] : b.counts) {
      nlohmann::json& slot = out[what.first == Operation::kRefresh ? "refreshes" : "checks"];
      if (what.second == ErrorClass::kNone) {
        slot["ok"] = slot["ok"].get<std::uint64_t>() + n;
      } else {
        const std::string cls(to_string(what.second));
        slot["failed"][cls] = slot["failed"].value(cls, std::uint64_t{0}) + n;
      }
    }
  }
  for (Operation op : {Operation::kRefresh, Operation::kCheck}) {
    const auto& slots = latency[op_index(op)];
    std::uint64_t total = 0;
    for (std::uint64_t n : slots)
      total += n;
    if (total == 0) continue;
    // The smallest slot bound below which at least `q` of the steps fall.
    auto quantile = [&](double q) {
      const auto want = static_cast<std::uint64_t>(std::ceil(q * static_cast<double>(total)));
      std::uint64_t seen = 0;
      for (std::size_t i = 0; i < kLatencySlots; ++i) {
        seen += slots[i];
        if (seen >= want) return std::round(slot_bound(i) * 10.0) / 10.0;
      }
      return std::round(slot_bound(kLatencySlots - 1) * 10.0) / 10.0;
    };
    out[op == Operation::kRefresh ? "refreshes" : "checks"]["latency_ms"] = {
        {"p50", quantile(0.5)}, {"p99", quantile(0.99)}, {"max", quantile(1.0)}};
  }
  return out;
}

// --- StatusReporter
// -------------------------------------------------------------------------------

StatusReporter::StatusReporter(TokenStore& store, const Worker& worker, const Clock& clock,
                               StatusConfig config, std::string owner, ProviderSet providers,
                               std::shared_ptr<spdlog::logger> log, const TimerFactory& timers)
    : store_(store),
      worker_(worker),
      clock_(clock),
      config_(std::move(config)),
      owner_(std::move(owner)),
      providers_(std::move(providers)),
      log_(std::move(log)),
      periodic_(timers()),
      soon_(timers()),
      started_(clock.system_now()) {}

void StatusReporter::start() {
  if (auto st = write_now(); !st)
    log_->error("cannot write the status file: {}", st.error().message());
  schedule_periodic();
}

void StatusReporter::stop() {
  periodic_->cancel();
  soon_->cancel();
  soon_armed_ = false;
}

void StatusReporter::schedule_periodic() {
  periodic_->arm(clock_.system_now() + config_.write_every, [this] {
    if (auto st = write_now(); !st) {
      log_->error("cannot write the status file: {}", st.error().message());
    }
    schedule_periodic();
  });
}

void StatusReporter::on_step(const StepReport& step) {
  window_.record(step.op, step.ok, step.error_class, step.latency, clock_.system_now());
  if (soon_armed_) return;
  soon_armed_ = true;
  // Spaced on the steady clock: a wall clock set back must not put the next write off.
  const auto wait = std::max(std::chrono::steady_clock::duration::zero(),
                             last_write_ + config_.min_interval - clock_.steady_now());
  soon_->arm(clock_.system_now() + std::chrono::duration_cast<WallTime::duration>(wait), [this] {
    soon_armed_ = false;
    if (auto st = write_now(); !st) {
      log_->error("cannot write the status file: {}", st.error().message());
    }
  });
}

Result<nlohmann::json> StatusReporter::snapshot() {
  const WallTime now = clock_.system_now();
  nlohmann::json s;
  s["version"] = TW_VERSION;
  s["pid"] = static_cast<std::int64_t>(getpid());
  s["owner"] = owner_;
  s["started"] = iso(started_);
  s["written"] = iso(now);
  s["last_tick"] = worker_.last_tick() == WallTime{} ? nlohmann::json(nullptr)
                                                     : nlohmann::json(iso(worker_.last_tick()));

  auto counts = store_.count_by_state();
  if (!counts) return counts.error();
  nlohmann::json providers = nlohmann::json::object();
  nlohmann::json totals = nlohmann::json::object();
  for (TokenState st : kTokenStates)
    totals[std::string(to_string(st))] = 0;
  ProviderSet shown = kAllProviders;
  for (const Provider& p : providers_) {
    if (std::find(shown.begin(), shown.end(), p) == shown.end()) shown.push_back(p);
  }
  for (const Provider& p : shown) {
    nlohmann::json& row = providers[std::string(to_string(p))];
    for (TokenState st : kTokenStates)
      row[std::string(to_string(st))] = 0;
  }
  for (const StateCounts& c : *counts) {
    const std::string state(to_string(c.state));
    providers[std::string(to_string(c.provider))][state] = c.count;
    totals[state] = totals[state].get<std::uint64_t>() + c.count;
  }
  s["tokens"] = {{"by_provider", providers}, {"total", totals}};

  auto due = store_.earliest_due_token(providers_);
  if (!due) return due.error();
  s["next_due"] = *due ? nlohmann::json(format_time((*due)->due)) : nlohmann::json(nullptr);
  const SysTime now_s = std::chrono::floor<Seconds>(now);
  if (*due && (*due)->due < now_s) {
    s["oldest_overdue"] = {{"token_id", (*due)->id},
                           {"due", format_time((*due)->due)},
                           {"overdue_seconds", (now_s - (*due)->due).count()}};
  } else {
    s["oldest_overdue"] = nullptr;
  }
  s["last_hour"] = window_.last_hour(now);
  s["in_flight"] = worker_.in_flight();
  s["in_hand"] = worker_.in_hand();

  // The longest waiting first; the total comes from the counts above.
  auto rows = store_.needing_reauth(kReauthListLimit);
  if (!rows) return rows.error();
  nlohmann::json reauth = nlohmann::json::array();
  for (const TokenRecord& r : *rows) {
    reauth.push_back({{"token_id", r.id},
                      {"provider", to_string(r.provider)},
                      {"kind", to_string(r.kind)},
                      {"workspace_id", r.workspace_id},
                      {"account_id", r.account_id},
                      {"state", to_string(r.state)},
                      {"since", format_time(r.state_since)},
                      {"reason", r.last_error_message}});
  }
  s["needs_reauth"] = reauth;
  s["needs_reauth_total"] =
      totals["needs_reauth"].get<std::uint64_t>() + totals["revoked"].get<std::uint64_t>();
  return s;
}

Status StatusReporter::write_now() {
  auto s = snapshot();
  if (!s) return s.error();
  last_write_ = clock_.steady_now();
  const nlohmann::json& t = (*s)["tokens"]["total"];
  summary_ = std::to_string(t["active"].get<std::uint64_t>()) + " active, " +
             std::to_string(t["failing"].get<std::uint64_t>()) + " failing, " +
             std::to_string((*s)["needs_reauth_total"].get<std::uint64_t>()) +
             " need re-auth; next due " +
             ((*s)["next_due"].is_string() ? (*s)["next_due"].get<std::string>() : "none");
  if (auto st = write_file_atomically(config_.file, s->dump(2) + "\n"); !st) return st;
  if (!config_.prometheus_file.empty()) {
    if (auto st = write_file_atomically(config_.prometheus_file, prometheus_text(*s)); !st) {
      return st;
    }
  }
  if (on_written) on_written(summary_);
  return Ok();
}

// --- files
// -----------------------------------------------------------------------------------------

std::string prometheus_text(const nlohmann::json& s) {
  std::ostringstream out;
  out << "# HELP tokenwarden_tokens Tokens by provider and state.\n"
         "# TYPE tokenwarden_tokens gauge\n";
  for (const auto& [provider, states] : s["tokens"]["by_provider"].items()) {
    for (const auto& [state, n] : states.items()) {
      out << "tokenwarden_tokens{provider=\"" << label(provider) << "\",state=\"" << label(state)
          << "\"} " << n.get<std::uint64_t>() << "\n";
    }
  }
  out << "# HELP tokenwarden_operations_last_hour Renewals and checks in the last hour by result.\n"
         "# TYPE tokenwarden_operations_last_hour gauge\n";
  for (const char* op : {"refreshes", "checks"}) {
    const std::string operation = std::string(op) == "refreshes" ? "refresh" : "check";
    const nlohmann::json& slot = s["last_hour"][op];
    out << "tokenwarden_operations_last_hour{operation=\"" << operation << "\",result=\"ok\"} "
        << slot["ok"].get<std::uint64_t>() << "\n";
    for (const auto& [cls, n] : slot["failed"].items()) {
      out << "tokenwarden_operations_last_hour{operation=\"" << operation << "\",result=\""
          << label(cls) << "\"} " << n.get<std::uint64_t>() << "\n";
    }
  }
  out << "# HELP tokenwarden_needs_reauth_tokens Tokens whose customer must reconnect.\n"
         "# TYPE tokenwarden_needs_reauth_tokens gauge\n"
      << "tokenwarden_needs_reauth_tokens " << s["needs_reauth_total"].get<std::uint64_t>() << "\n";
  out << "# HELP tokenwarden_oldest_overdue_seconds How late the most overdue token is.\n"
         "# TYPE tokenwarden_oldest_overdue_seconds gauge\n"
      << "tokenwarden_oldest_overdue_seconds "
      << (s["oldest_overdue"].is_object()
              ? s["oldest_overdue"]["overdue_seconds"].get<std::int64_t>()
              : 0)
      << "\n";
  // Unix times, so an alert can fire on `time() - tokenwarden_last_tick_timestamp_seconds`: the
  // file stays behind when the daemon dies.
  auto unix_of = [](const nlohmann::json& t) -> std::int64_t {
    if (!t.is_string()) return 0;
    auto parsed = parse_time(t.get<std::string>(), SysTime{});
    return parsed ? to_unix(*parsed) : 0;
  };
  out << "# HELP tokenwarden_last_tick_timestamp_seconds When the event loop last ran.\n"
         "# TYPE tokenwarden_last_tick_timestamp_seconds gauge\n"
      << "tokenwarden_last_tick_timestamp_seconds " << unix_of(s["last_tick"]) << "\n";
  out << "# HELP tokenwarden_status_written_timestamp_seconds When these figures were written.\n"
         "# TYPE tokenwarden_status_written_timestamp_seconds gauge\n"
      << "tokenwarden_status_written_timestamp_seconds " << unix_of(s["written"]) << "\n";
  out << "# HELP tokenwarden_in_flight_requests Requests to providers in flight.\n"
         "# TYPE tokenwarden_in_flight_requests gauge\n"
      << "tokenwarden_in_flight_requests " << s["in_flight"].get<std::uint64_t>() << "\n";
  return out.str();
}

Status write_file_atomically(const std::string& path, const std::string& content) {
  const std::filesystem::path target(path);
  const std::filesystem::path dir =
      target.has_parent_path() ? target.parent_path() : std::filesystem::path(".");
  std::string tmp = (dir / ("." + target.filename().string() + ".XXXXXX")).string();
  UniqueFd fd(mkstemp(tmp.data()));
  if (!fd.valid()) {
    return Error(Errc::kIo, "cannot create a file beside " + path + ": " + errno_text(errno));
  }
  auto fail = [&](const char* what) {
    const int err = errno;
    ::unlink(tmp.c_str());
    return Error(Errc::kIo, std::string(what) + " " + path + ": " + errno_text(err));
  };
  if (::fchmod(fd.get(), 0644) != 0) return fail("cannot set the mode of");
  std::size_t done = 0;
  while (done < content.size()) {
    const ssize_t n = ::write(fd.get(), content.data() + done, content.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return fail("cannot write");
    done += static_cast<std::size_t>(n);
  }
  if (::fsync(fd.get()) != 0) return fail("cannot fsync");
  if (fd.close() != 0) return fail("cannot close");
  if (::rename(tmp.c_str(), path.c_str()) != 0) return fail("cannot rename into");
  UniqueFd d(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (d.valid()) (void)::fsync(d.get());
  return Ok();
}

}  // namespace tw
