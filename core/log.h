// Logging: spdlog loggers as tokenwarden configures them.
//
// Thread-safety: spdlog's _mt sinks; a logger may be shared between threads.
// Text lines go to stderr as "2026-11-25T12:00:00.123Z info message" (UTC); with format "json",
// one JSON object per line {"time","level","message"} with the message properly escaped. Nothing
// here can print a Secret: it has no formatter (core/secret.h).
#pragma once

#include <iosfwd>
#include <memory>
#include <string>

#include <spdlog/logger.h>

#include "config/config.h"

namespace tw {

// A logger named `name` writing to stderr per `config` (level and format).
std::shared_ptr<spdlog::logger> make_logger(const std::string& name, const LogConfig& config);
// The same, writing to `out` (tests capture every line this way).
std::shared_ptr<spdlog::logger> make_logger(const std::string& name, const LogConfig& config,
                                            std::ostream& out);

}  // namespace tw
