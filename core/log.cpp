#include "core/log.h"

#include <iostream>
#include <mutex>

#include <nlohmann/json.hpp>
#include <spdlog/details/log_msg.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/sinks/stdout_sinks.h>

namespace tw {

namespace {

constexpr const char* kTextPattern = "%Y-%m-%dT%H:%M:%S.%eZ %l %v";

// One JSON object per line: {"time": "...Z", "level": "info", "message": "..."}.
class JsonFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    time_.format(msg, time_buf_);
    nlohmann::json line{{"time", std::string(time_buf_.data(), time_buf_.size())},
                        {"level", std::string(spdlog::level::to_string_view(msg.level).data(),
                                              spdlog::level::to_string_view(msg.level).size())},
                        {"message", std::string(msg.payload.data(), msg.payload.size())}};
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

std::shared_ptr<spdlog::logger> configure(std::shared_ptr<spdlog::logger> log,
                                          const LogConfig& config) {
  if (config.format == "json") {
    log->set_formatter(std::make_unique<JsonFormatter>());
  } else {
    log->set_formatter(
        std::make_unique<spdlog::pattern_formatter>(kTextPattern, spdlog::pattern_time_type::utc));
  }
  log->set_level(spdlog::level::from_str(config.level));
  log->flush_on(spdlog::level::info);
  return log;
}

}  // namespace

std::shared_ptr<spdlog::logger> make_logger(const std::string& name, const LogConfig& config) {
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

}  // namespace tw
