#include "core/log.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <iostream>
#include <mutex>

#include <nlohmann/json.hpp>
#include <spdlog/details/log_msg.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <sys/stat.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

namespace tw {

namespace {

constexpr const char* kTextPattern = "%Y-%m-%dT%H:%M:%S.%eZ %l %v";

thread_local LogFields t_fields;

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

// One JSON object per line: {"time": "...Z", "level": "info", "message": "...", fields...}.
class JsonFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    time_.format(msg, time_buf_);
    const auto level = spdlog::level::to_string_view(msg.level);
    nlohmann::json line{{"time", std::string(time_buf_.data(), time_buf_.size())},
                        {"level", std::string(level.data(), level.size())},
                        {"message", std::string(msg.payload.data(), msg.payload.size())}};
    for (const auto& [name, value] : t_fields)
      line[lower(name)] = value;
    time_buf_.clear();
    // Replace, never throw, on invalid UTF-8 in a message.
    const std::string text = line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    dest.append(text.data(), text.data() + text.size());
    dest.push_back('\n');
  }
  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<JsonFormatter>();
  }

 private:
  spdlog::pattern_formatter time_{"%Y-%m-%dT%H:%M:%S.%eZ", spdlog::pattern_time_type::utc, ""};
  spdlog::memory_buf_t time_buf_;
};

// journald: MESSAGE, PRIORITY and SYSLOG_IDENTIFIER, plus the thread's fields.
class JournalSink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  JournalSink(std::string identifier, JournalSend send)
      : identifier_("SYSLOG_IDENTIFIER=" + std::move(identifier)), send_(std::move(send)) {}

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    std::vector<std::string> parts;
    parts.reserve(3 + t_fields.size());
    parts.push_back("MESSAGE=" + std::string(msg.payload.data(), msg.payload.size()));
    parts.push_back("PRIORITY=" + std::to_string(priority(msg.level)));
    parts.push_back(identifier_);
    for (const auto& [name, value] : t_fields) {
      std::string field = name;
      field.append("=").append(value);
      parts.push_back(std::move(field));
    }
    std::vector<iovec> iov(parts.size());
    for (std::size_t i = 0; i < parts.size(); ++i) {
      iov[i].iov_base = parts[i].data();
      iov[i].iov_len = parts[i].size();
    }
    send_(iov.data(), static_cast<int>(iov.size()));
  }
  void flush_() override {}

 private:
  static int priority(spdlog::level::level_enum level) {
    switch (level) {
      case spdlog::level::trace:
      case spdlog::level::debug:
        return 7;
      case spdlog::level::info:
        return 6;
      case spdlog::level::warn:
        return 4;
      case spdlog::level::err:
        return 3;
      case spdlog::level::critical:
        return 2;
      default:
        return 6;
    }
  }

  std::string identifier_;
  JournalSend send_;
};

std::shared_ptr<spdlog::logger> configure(std::shared_ptr<spdlog::logger> log,
                                          const LogConfig& config) {
  if (config.format == "json") {
    log->set_formatter(std::make_unique<JsonFormatter>());
  } else {
    log->set_formatter(
        std::make_unique<spdlog::pattern_formatter>(kTextPattern, spdlog::pattern_time_type::utc));
  }
  reconfigure_logger(*log, config);
  log->flush_on(spdlog::level::info);
  return log;
}

}  // namespace

ScopedLogFields::ScopedLogFields(LogFields fields) : previous_(std::move(t_fields)) {
  t_fields = std::move(fields);
}

ScopedLogFields::~ScopedLogFields() {
  t_fields = std::move(previous_);
}

const LogFields& current_log_fields() {
  return t_fields;
}

bool stderr_is_journal() {
  const char* stream = std::getenv("JOURNAL_STREAM");  // NOLINT(concurrency-mt-unsafe): read-only
  if (stream == nullptr) return false;
  struct stat st {};
  if (fstat(STDERR_FILENO, &st) != 0) return false;
  const std::string expected = std::to_string(static_cast<unsigned long long>(st.st_dev)) + ":" +
                               std::to_string(static_cast<unsigned long long>(st.st_ino));
  return expected == stream;
}

std::shared_ptr<spdlog::logger> make_logger(const std::string& name, const LogConfig& config) {
  if (config.format == "text" && stderr_is_journal()) {
    return make_journal_logger(name, config,
                               [](const iovec* iov, int n) { return sd_journal_sendv(iov, n); });
  }
  return configure(
      std::make_shared<spdlog::logger>(name, std::make_shared<spdlog::sinks::stderr_sink_mt>()),
      config);
}

std::shared_ptr<spdlog::logger> make_logger(const std::string& name, const LogConfig& config,
                                            std::ostream& out) {
  return configure(
      std::make_shared<spdlog::logger>(name, std::make_shared<spdlog::sinks::ostream_sink_mt>(out)),
      config);
}

std::shared_ptr<spdlog::logger> make_journal_logger(const std::string& name,
                                                    const LogConfig& config, JournalSend send) {
  auto log = std::make_shared<spdlog::logger>(
      name, std::make_shared<JournalSink>("tokenwarden", std::move(send)));
  reconfigure_logger(*log, config);
  log->flush_on(spdlog::level::info);
  return log;
}

void reconfigure_logger(spdlog::logger& log, const LogConfig& config) {
  log.set_level(spdlog::level::from_str(config.level));
}

}  // namespace tw
