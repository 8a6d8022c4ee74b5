// Logging: spdlog loggers as tokenwarden configures them.
//
// Thread-safety: spdlog's _mt sinks; a logger may be shared between threads. Log fields are per
// thread.
// Three destinations:
// - under systemd, when stderr is the journal stream ($JOURNAL_STREAM names it), journald, with
//   each line's fields as journal fields, so `journalctl -u tokenwarden TOKEN_ID=tok_...` works;
// - otherwise text lines on stderr, "2026-11-25T12:00:00.123Z info message" (UTC);
// - or, with log.format json, one JSON object per line {"time","level","message", fields...},
//   the message and fields properly escaped.
// Nothing here can print a Secret: it has no formatter (core/secret.h). Field values are the
// caller's: never put a secret in one.
#pragma once

#include <functional>
#include <iosfwd>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <spdlog/logger.h>
#include <sys/uio.h>

#include "config/config.h"

namespace tw {

// Journal-style fields: upper-case names (TOKEN_ID, PROVIDER, ...), one-line values.
using LogFields = std::vector<std::pair<std::string, std::string>>;

// Attaches `fields` to every line this thread logs while it lives.
class ScopedLogFields {
 public:
  explicit ScopedLogFields(LogFields fields);
  ~ScopedLogFields();
  ScopedLogFields(const ScopedLogFields&) = delete;
  ScopedLogFields& operator=(const ScopedLogFields&) = delete;

 private:
  LogFields previous_;
};

// The fields attached on this thread now.
const LogFields& current_log_fields();

// How lines reach journald: sd_journal_sendv, or a test's stand-in.
using JournalSend = std::function<int(const struct iovec* iov, int n)>;

// A logger named `name` per `config` (level and format): journald when stderr is the journal
// stream and the format is text, else stderr.
std::shared_ptr<spdlog::logger> make_logger(const std::string& name, const LogConfig& config);
// The same, writing to `out` (tests capture every line this way).
std::shared_ptr<spdlog::logger> make_logger(const std::string& name, const LogConfig& config,
                                            std::ostream& out);
// A logger writing to journald through `send` (tests pass a fake).
std::shared_ptr<spdlog::logger> make_journal_logger(const std::string& name,
                                                    const LogConfig& config, JournalSend send);
// Whether stderr is connected to the journal ($JOURNAL_STREAM matches stderr's device and inode).
bool stderr_is_journal();
// Applies a reloaded log config (level) to `log`.
void reconfigure_logger(spdlog::logger& log, const LogConfig& config);

}  // namespace tw
