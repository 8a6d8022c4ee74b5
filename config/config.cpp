#include "config/config.h"

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <libpq-fe.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/parser.h>
#include <yaml-cpp/yaml.h>

#include "core/fs.h"
#include "core/text.h"

namespace tw {

namespace {

// ---------------------------------------------------------------------------------------------
// Text for messages. Every message is one line; values are shown only for non-secret keys.

constexpr std::string_view kSecretForms =
    "secrets must be given as {file: PATH}, {env: NAME} or {credential: NAME}";
constexpr std::string_view kDurationHint = "a duration like 7d, 72h, 90s";

// A non-secret value for a message: quoted, one line, cut at 40 characters.
std::string in_quotes(std::string_view s) {
  constexpr std::size_t kMax = 40;
  std::string out = "\"" + one_line(s.substr(0, kMax));
  if (s.size() > kMax) out += "...";
  return out + "\"";
}

bool has_control_char(std::string_view s) {
  return std::any_of(s.begin(), s.end(), [](char ch) {
    const auto c = static_cast<unsigned char>(ch);
    return c < 0x20 || c == 0x7f;
  });
}

// Levenshtein distance, for "did you mean".
std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j)
    row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diagonal = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// yaml-cpp counts lines from 0 and marks some nodes -1; messages count from 1.
int yaml_line(const YAML::Mark& mark) {
  return mark.line >= 0 ? mark.line + 1 : 1;
}

std::string_view kind_of(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null:
      return "nothing";
    case YAML::NodeType::Scalar:
      return "a scalar";
    case YAML::NodeType::Sequence:
      return "a sequence";
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Undefined:
      break;
  }
  return "nothing";
}

// ---------------------------------------------------------------------------------------------
// Files: read whole, without leaving copies of the bytes in freed memory (a file may be a secret).

constexpr std::size_t kMaxFileBytes = 1 << 20;

// Doubles the size of `buf`, wiping the old allocation.
void grow(std::string& buf) {
  std::string bigger(buf.size() * 2, '\0');
  std::memcpy(bigger.data(), buf.data(), buf.size());
  wipe(buf);
  buf.swap(bigger);
}

// Reads the file at `path` into `out` (replacing its contents). Returns 0 or an errno value;
// EFBIG past kMaxFileBytes.
int read_whole_file(const std::string& path, std::string& out) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return errno;
  struct stat st {};
  std::size_t size_hint = 4096;
  if (::fstat(fd.get(), &st) == 0 && st.st_size > 0) {
    size_hint = std::min(static_cast<std::size_t>(st.st_size) + 1, kMaxFileBytes + 1);
  }
  std::string buf(size_hint, '\0');
  std::size_t len = 0;
  for (;;) {
    if (len == buf.size()) {
      if (len > kMaxFileBytes) {
        wipe(buf);
        return EFBIG;
      }
      grow(buf);
    }
    const ssize_t n = ::read(fd.get(), buf.data() + len, buf.size() - len);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      wipe(buf);
      return err;
    }
    len += static_cast<std::size_t>(n);
  }
  if (len > kMaxFileBytes) {
    wipe(buf);
    return EFBIG;
  }
  buf.resize(len);
  wipe(out);
  out.swap(buf);
  return 0;
}

// Drops one trailing "\n" or "\r\n".
std::size_t without_newline(std::string_view s) {
  if (s.ends_with("\r\n")) return s.size() - 2;
  if (s.ends_with('\n')) return s.size() - 1;
  return s.size();
}

Result<Secret> secret_from_file(const std::string& path, const std::string& what) {
  std::string text;
  if (int err = read_whole_file(path, text); err != 0) {
    return Error(Errc::kConfig, what + ": cannot read: " + errno_text(err));
  }
  text.resize(without_newline(text));
  if (text.empty()) return Error(Errc::kConfig, what + " is empty");
  return Secret::take(text);
}

Result<Secret> secret_from_env(const std::string& name) {
  const char* value = std::getenv(name.c_str());
  if (value == nullptr) return Error(Errc::kConfig, "environment variable " + name + " is not set");
  std::string_view text(value);
  text = text.substr(0, without_newline(text));
  if (text.empty()) return Error(Errc::kConfig, "environment variable " + name + " is empty");
  return Secret(text);
}

Result<Secret> secret_from_credential(const std::string& name) {
  const char* dir = std::getenv("CREDENTIALS_DIRECTORY");
  if (dir == nullptr || *dir == '\0') {
    return Error(Errc::kConfig, "credential " + name +
                                    ": $CREDENTIALS_DIRECTORY is not set (systemd sets it for "
                                    "LoadCredential= in the unit)");
  }
  const std::string path = std::string(dir) + "/" + name;
  return secret_from_file(path, "credential " + name + " (" + path + ")");
}

// ---------------------------------------------------------------------------------------------
// Parsing.

// One parse: the name of the text and the first error found. Later errors are dropped (the
// operator fixes one line at a time), so readers may carry on after a failure; they do nothing.
class Context {
 public:
  explicit Context(std::string_view source) : source_(source) {}

  bool failed() const { return error_.has_value(); }
  const Error& error() const { return *error_; }

  // "<source>:<line>: <path>: <why>".
  void fail(int line, std::string_view path, std::string_view why) {
    fail_at(line, std::string(path) + ": " + std::string(why));
  }
  // "<source>:<line>: <what>".
  void fail_at(int line, std::string_view what) {
    if (failed()) return;
    error_.emplace(Errc::kConfig,
                   std::string(source_) + ":" + std::to_string(line) + ": " + one_line(what));
  }

 private:
  std::string_view source_;
  std::optional<Error> error_;
};

constexpr std::string_view kTopLevel = "(top level)";

enum class Need { kOptional, kRequired };
enum class Empty { kRejected, kAllowed };
// Whether unknown keys may be named in messages: not inside a secret reference, where a key could
// be a secret pasted in by mistake (`app_secret: {EAAB...}`).
enum class KeyNames { kShown, kHidden };

// One key found in a map.
struct Field {
  YAML::Node value;
  std::string path;  // dotted, e.g. providers.meta.app_id
  int line;          // of the key
};

// Reads one YAML map as a list of fields. Each read names a key, which becomes known; a typed
// read leaves its output unchanged when the key is absent and reports a bad value to the Context.
// finish() then reports duplicate keys, unknown keys (typos) and missing required keys.
class MapReader {
 public:
  // `node` is a map, or null (read as an empty map).
  MapReader(Context& ctx, YAML::Node node, std::string path, int line,
            KeyNames names = KeyNames::kShown)
      : ctx_(&ctx), node_(std::move(node)), path_(std::move(path)), line_(line), names_(names) {}

  bool has(std::string_view key) { return find(key).has_value(); }
  // Whether `key` is present and holds a map.
  bool is_map(std::string_view key) {
    auto f = find(key);
    return f && f->value.IsMap();
  }

  // The scalar key names of this map, in file order, for a map whose keys the file chooses (each
  // becomes known; finish() still reports a key that is not a plain name, or a duplicate).
  std::vector<std::string> keys() {
    std::vector<std::string> out;
    if (!node_.IsMap()) return out;
    for (auto it = node_.begin(); it != node_.end(); ++it) {
      const YAML::Node key = it->first;  // a copy: `it->` returns a temporary
      if (key.IsScalar()) out.push_back(key.Scalar());
    }
    return out;
  }

  // The line of `key`, or of this map when it is absent.
  int line_of(std::string_view key) {
    auto f = find(key);
    return f ? f->line : line_;
  }

  void fail(std::string_view key, std::string_view why) {
    ctx_->fail(line_of(key), child(key), why);
  }

  void boolean(std::string_view key, bool& out) {
    auto f = field(key);
    if (!f) return;
    auto s = scalar(*f, "true or false");
    if (!s) return;
    if (*s == "true" || *s == "True" || *s == "TRUE") {
      out = true;
    } else if (*s == "false" || *s == "False" || *s == "FALSE") {
      out = false;
    } else {
      bad(*f, "expected true or false; got " + in_quotes(*s));
    }
  }

  void string(std::string_view key, std::string& out, Need need = Need::kOptional,
              Empty empty = Empty::kRejected) {
    auto f = field(key, need);
    if (!f) return;
    auto s = text(*f, empty);
    if (s) out = std::move(*s);
  }

  // An http:// or https:// URL. kBase: a provider's base URL, without a trailing slash, quoted
  // in errors. kSecretish: a URL whose path or user:password@ may be a credential (a webhook):
  // never quoted, and it may end with "/".
  enum class UrlKind { kBase, kSecretish };
  void url(std::string_view key, std::string& out, UrlKind kind = UrlKind::kBase) {
    auto f = field(key);
    if (!f) return;
    auto s = text(*f, Empty::kRejected);
    if (!s) return;
    const std::string got = kind == UrlKind::kBase ? "; got " + in_quotes(*s) : std::string();
    std::string_view rest = *s;
    if (!(rest.starts_with("http://") || rest.starts_with("https://"))) {
      return bad(*f, "expected a URL starting with http:// or https://" + got);
    }
    rest.remove_prefix(rest.find("//") + 2);
    if (rest.empty() || rest.front() == '/') return bad(*f, "URL has no host" + got);
    if (rest.find_first_of(" \t\r\n") != std::string_view::npos) {
      return bad(*f, "URL must not contain spaces" + got);
    }
    if (kind == UrlKind::kBase && s->ends_with('/')) {
      return bad(*f, "URL must not end with \"/\"" + got);
    }
    out = std::move(*s);
  }

  void one_of(std::string_view key, std::string& out,
              std::initializer_list<std::string_view> allowed) {
    auto f = field(key);
    if (!f) return;
    auto s = text(*f, Empty::kRejected);
    if (!s) return;
    if (std::find(allowed.begin(), allowed.end(), *s) != allowed.end()) {
      out = std::move(*s);
      return;
    }
    bad(*f, "expected one of " + joined(allowed) + "; got " + in_quotes(*s));
  }

  // A sequence of non-empty strings; null reads as empty.
  void strings(std::string_view key, std::vector<std::string>& out) {
    auto f = field(key);
    if (!f) return;
    if (f->value.IsNull()) return out.clear();
    if (!f->value.IsSequence()) {
      return bad(*f, "expected a list of strings, got " + std::string(kind_of(f->value)));
    }
    std::vector<std::string> result;
    for (const YAML::Node& element : f->value) {
      const std::string path = f->path + "[" + std::to_string(result.size()) + "]";
      auto s = text(Field{element, path, yaml_line(element.Mark())}, Empty::kRejected);
      if (!s) return;
      result.push_back(std::move(*s));
    }
    out = std::move(result);
  }

  // A non-empty sequence of integers, each from `min` to `max`.
  void integers(std::string_view key, std::vector<int>& out, int min, int max) {
    auto f = field(key);
    if (!f) return;
    if (!f->value.IsSequence() || f->value.size() == 0) {
      return bad(*f,
                 "expected a non-empty list of integers, got " + std::string(kind_of(f->value)));
    }
    std::vector<int> result;
    for (const YAML::Node& element : f->value) {
      int v = 0;
      const auto [ptr, ec] =
          element.IsScalar() ? std::from_chars(element.Scalar().data(),
                                               element.Scalar().data() + element.Scalar().size(), v)
                             : std::from_chars_result{nullptr, std::errc::invalid_argument};
      if (ec != std::errc() || ptr != element.Scalar().data() + element.Scalar().size() ||
          v < min || v > max) {
        return ctx_->fail(
            yaml_line(element.Mark()), f->path + "[" + std::to_string(result.size()) + "]",
            "expected an integer from " + std::to_string(min) + " to " + std::to_string(max));
      }
      result.push_back(v);
    }
    out = std::move(result);
  }

  template <class Int>
  void integer(std::string_view key, Int& out, std::int64_t min, std::int64_t max) {
    auto f = field(key);
    if (!f) return;
    auto s = scalar(*f, "an integer");
    if (!s) return;
    std::int64_t v = 0;
    const char* end = s->data() + s->size();
    auto [ptr, ec] = std::from_chars(s->data(), end, v);
    if (ec != std::errc() || ptr != end)
      return bad(*f, "expected an integer; got " + in_quotes(*s));
    if (v < min || v > max) {
      return bad(*f, "must be from " + std::to_string(min) + " to " + std::to_string(max) +
                         "; got " + std::to_string(v));
    }
    out = static_cast<Int>(v);
  }

  void number(std::string_view key, double& out, double min, double max) {
    auto f = field(key);
    if (!f) return;
    auto s = scalar(*f, "a number");
    if (!s) return;
    double v = 0;
    const char* end = s->data() + s->size();
    auto [ptr, ec] = std::from_chars(s->data(), end, v);
    if (ec != std::errc() || ptr != end || !std::isfinite(v)) {
      return bad(*f, "expected a number; got " + in_quotes(*s));
    }
    if (!(v >= min && v <= max)) {
      return bad(*f, "must be a number from " + format_number(min) + " to " + format_number(max) +
                         "; got " + in_quotes(*s));
    }
    out = v;
  }

  // A duration greater than zero.
  void period(std::string_view key, Millis& out) {
    auto f = field(key);
    if (!f) return;
    if (auto d = duration(*f)) out = *d;
  }

  // A duration greater than zero, in whole seconds.
  void period(std::string_view key, Seconds& out) {
    auto f = field(key);
    if (!f) return;
    if (auto d = duration(*f)) {
      if (auto s = whole_seconds(*f, *d)) out = *s;
    }
  }

  // A period in whole seconds, or `off`.
  void period_or_off(std::string_view key, std::optional<Seconds>& out) {
    auto f = field(key);
    if (!f) return;
    if (f->value.IsScalar() && f->value.Scalar() == "off") {
      out = std::nullopt;
      return;
    }
    if (auto d = duration(*f, " or off")) {
      if (auto s = whole_seconds(*f, *d)) out = *s;
    }
  }

  void secret(std::string_view key, SecretRef& out, Need need) {
    auto f = field(key, need);
    if (!f) return;
    if (!f->value.IsMap()) {
      // Never show the value: it may be the secret itself.
      return bad(*f, "got " + std::string(kind_of(f->value)) + "; " + std::string(kSecretForms));
    }
    MapReader ref(*ctx_, f->value, f->path, f->line, KeyNames::kHidden);
    SecretRef result;
    int forms = 0;
    for (auto [name, source] :
         {std::pair{"file", SecretRef::Source::kFile}, std::pair{"env", SecretRef::Source::kEnv},
          std::pair{"credential", SecretRef::Source::kCredential}}) {
      if (!ref.has(name)) continue;
      ++forms;
      result.source = source;
      ref.string(name, result.name);
    }
    ref.finish();
    if (forms != 1) {
      return bad(*f, "give exactly one of file, env, credential; " + std::string(kSecretForms));
    }
    if (result.source == SecretRef::Source::kCredential &&
        (result.name.find('/') != std::string::npos || result.name == "." || result.name == "..")) {
      return ref.fail("credential", "must be a file name in $CREDENTIALS_DIRECTORY, without \"/\"");
    }
    if (!ctx_->failed()) out = std::move(result);
  }

  // A nested map: nullopt when absent, or when not a map (reported). Null reads as an empty map.
  std::optional<MapReader> section(std::string_view key) {
    auto f = field(key);
    if (!f) return std::nullopt;
    if (!f->value.IsMap() && !f->value.IsNull()) {
      bad(*f, "expected a map, got " + std::string(kind_of(f->value)));
      return std::nullopt;
    }
    return MapReader(*ctx_, f->value, f->path, f->line);
  }

  // Reports the first unknown or duplicated key in file order, else the first missing required key.
  // Call it after the reads: the keys read are the known ones.
  void finish() {
    std::vector<std::pair<std::string, int>> seen;
    for (auto it = node_.begin(); node_.IsMap() && it != node_.end() && !ctx_->failed(); ++it) {
      const YAML::Node key = it->first;  // a copy: `it->` returns a temporary
      const int line = yaml_line(key.Mark());
      const std::string name = key.IsScalar() ? key.Scalar() : std::string();
      if (!is_known(name)) return unknown(key, name, line);
      auto first = std::find_if(seen.begin(), seen.end(), [&](auto& s) { return s.first == name; });
      if (first != seen.end()) {
        return ctx_->fail(line, child(name),
                          "duplicate key (first on line " + std::to_string(first->second) + ")");
      }
      seen.emplace_back(name, line);
    }
    for (const std::string& key : missing_) {
      ctx_->fail(line_, child(key), "missing required key");
    }
  }

 private:
  std::string child(std::string_view key) const {
    return path_.empty() ? std::string(key) : path_ + "." + std::string(key);
  }

  // The entry for `key`; the first one when the key is duplicated.
  std::optional<Field> find(std::string_view key) {
    if (std::find(known_.begin(), known_.end(), key) == known_.end()) known_.emplace_back(key);
    if (!node_.IsMap()) return std::nullopt;
    for (auto it = node_.begin(); it != node_.end(); ++it) {
      if (it->first.IsScalar() && it->first.Scalar() == key) {
        return Field{it->second, child(key), yaml_line(it->first.Mark())};
      }
    }
    return std::nullopt;
  }

  // find(), noting a missing required key for finish(). Nullopt after an error, too.
  std::optional<Field> field(std::string_view key, Need need = Need::kOptional) {
    auto f = find(key);
    if (!f && need == Need::kRequired) missing_.emplace_back(key);
    if (ctx_->failed()) return std::nullopt;
    return f;
  }

  void bad(const Field& f, std::string_view why) { ctx_->fail(f.line, f.path, why); }

  // The scalar text of a field, or nullopt (reported) when it is a map, sequence or nothing.
  std::optional<std::string> scalar(const Field& f, std::string_view expected) {
    if (f.value.IsScalar()) return f.value.Scalar();
    bad(f, "expected " + std::string(expected) + ", got " + std::string(kind_of(f.value)));
    return std::nullopt;
  }

  // A string value: a scalar without control characters, non-empty unless allowed.
  std::optional<std::string> text(const Field& f, Empty empty) {
    auto s = scalar(f, "a string");
    if (!s) return std::nullopt;
    if (s->empty() && empty == Empty::kRejected) {
      bad(f, "must not be empty");
      return std::nullopt;
    }
    if (has_control_char(*s)) {
      bad(f, "must not contain control characters");
      return std::nullopt;
    }
    return s;
  }

  std::optional<Millis> duration(const Field& f, std::string_view alternatives = "") {
    const std::string expected = std::string(kDurationHint) + std::string(alternatives);
    auto s = scalar(f, expected);
    if (!s) return std::nullopt;
    if (*s == "off" && alternatives.empty()) {
      bad(f, "cannot be off; expected " + expected);
      return std::nullopt;
    }
    auto d = parse_duration(*s);
    if (!d) {
      bad(f, "expected " + expected + "; got " + in_quotes(*s));
      return std::nullopt;
    }
    if (d->count() <= 0) {
      bad(f, "must be greater than zero");
      return std::nullopt;
    }
    return *d;
  }

  std::optional<Seconds> whole_seconds(const Field& f, Millis d) {
    if (d.count() % 1000 == 0) return std::chrono::duration_cast<Seconds>(d);
    bad(f, "must be a whole number of seconds; got " + format_duration(d));
    return std::nullopt;
  }

  bool is_known(std::string_view name) const {
    return std::find(known_.begin(), known_.end(), name) != known_.end();
  }

  void unknown(const YAML::Node& key, const std::string& name, int line) {
    const std::string where = path_.empty() ? std::string(kTopLevel) : path_;
    if (!key.IsScalar()) return ctx_->fail(line, where, "keys must be plain names");
    if (names_ == KeyNames::kHidden) {
      return ctx_->fail(line, where, "unknown key; " + std::string(kSecretForms));
    }
    ctx_->fail(line, child(name), "unknown key (" + suggestion(name) + ")");
  }

  std::string suggestion(std::string_view name) const {
    const std::string* best = nullptr;
    std::size_t best_distance = 3;
    for (const std::string& k : known_) {
      const std::size_t d = edit_distance(name, k);
      if (d < best_distance) {
        best = &k;
        best_distance = d;
      }
    }
    if (best != nullptr) return "did you mean \"" + *best + "\"?";
    std::string allowed = "allowed: ";
    for (std::size_t i = 0; i < known_.size(); ++i)
      allowed += (i > 0 ? ", " : "") + known_[i];
    return allowed;
  }

  static std::string joined(std::initializer_list<std::string_view> words) {
    std::string out;
    for (std::string_view w : words)
      out += (out.empty() ? "" : ", ") + std::string(w);
    return out;
  }

  static std::string format_number(double v) {
    char buf[32];
    auto [ptr, ec] = std::to_chars(buf, buf + sizeof buf, v);
    return ec == std::errc() ? std::string(buf, ptr) : std::string("?");
  }

  Context* ctx_;
  YAML::Node node_;
  std::string path_;
  int line_;
  KeyNames names_;
  std::vector<std::string> known_;    // keys asked for, in order: the allowed keys
  std::vector<std::string> missing_;  // required keys that were absent
};

// ---------------------------------------------------------------------------------------------
// Sections. Each reads its fields, then finish()es, then checks what spans several fields.

void parse_database(MapReader& r, DatabaseConfig& c) {
  r.string("path", c.path);
  r.period("busy_timeout", c.busy_timeout);
  r.finish();
  if (c.busy_timeout > std::chrono::hours(1)) r.fail("busy_timeout", "must be at most 1h");
}

void parse_postgres(MapReader& r, PostgresConfig& c) {
  r.string("dsn", c.dsn);
  r.secret("dsn_secret", c.dsn_secret, Need::kOptional);
  r.period("lock_timeout", c.lock_timeout);
  r.period("statement_timeout", c.statement_timeout);
  r.finish();
  if (r.has("dsn") && r.has("dsn_secret")) r.fail("dsn_secret", "give dsn or dsn_secret, not both");
  if (!c.dsn.empty()) {
    if (auto bad = check_dsn(c.dsn, DsnSource::kConfigFile); !bad.empty()) r.fail("dsn", bad);
  }
}

void parse_storage(MapReader& r, StorageConfig& c) {
  std::string backend = "sqlite";
  r.one_of("backend", backend, {"sqlite", "postgres"});
  c.backend =
      backend == "postgres" ? StorageConfig::Backend::kPostgres : StorageConfig::Backend::kSqlite;
  if (auto s = r.section("postgres")) parse_postgres(*s, c.postgres);
  r.finish();
  if (c.backend == StorageConfig::Backend::kPostgres && c.postgres.dsn.empty() &&
      c.postgres.dsn_secret.empty()) {
    r.fail("postgres", "backend postgres needs postgres.dsn or postgres.dsn_secret");
  }
}

void parse_key(MapReader& r, KeyConfig& c) {
  r.string("file", c.file);
  r.strings("previous_files", c.previous_files);
  r.finish();
}

void parse_schedule(MapReader& r, ScheduleConfig& c) {
  r.period_or_off("refresh_every", c.refresh_every);
  r.period_or_off("renew_before", c.renew_before);
  r.period("check_every", c.check_every);
}

void parse_limits(MapReader& r, ProviderLimits& c) {
  r.number("requests_per_second", c.requests_per_second, 0.001, 1'000'000.0);
  r.integer("burst", c.burst, 1, 1'000'000);
  r.integer("breaker_failures", c.breaker_failures, 1, 1'000'000);
  r.period("breaker_cooldown", c.breaker_cooldown);
}

// A provider is enabled by the presence of its section, unless it says `enabled: false`; only
// then are its credentials required.
Need read_enabled(MapReader& r, bool& enabled) {
  enabled = true;
  r.boolean("enabled", enabled);
  return enabled ? Need::kRequired : Need::kOptional;
}

void parse_meta(MapReader& r, MetaConfig& c) {
  const Need need = read_enabled(r, c.enabled);
  r.url("graph_base_url", c.graph_base_url);
  r.string("api_version", c.api_version);
  r.url("instagram_base_url", c.instagram_base_url);
  r.string("app_id", c.app_id, need);
  r.secret("app_secret", c.app_secret, need);
  parse_schedule(r, c.schedule);
  parse_limits(r, c.limits);
  r.finish();
  if (c.api_version.find('/') != std::string::npos) {
    r.fail("api_version", "must not contain \"/\"; write it like v25.0");
  }
}

void parse_google(MapReader& r, GoogleConfig& c) {
  const Need need = read_enabled(r, c.enabled);
  r.url("oauth_base_url", c.oauth_base_url);
  r.url("business_base_url", c.business_base_url);
  r.string("client_id", c.client_id, need);
  r.secret("client_secret", c.client_secret, need);
  parse_schedule(r, c.schedule);
  parse_limits(r, c.limits);
  r.finish();
}

void parse_tiktok(MapReader& r, TikTokConfig& c) {
  const Need need = read_enabled(r, c.enabled);
  r.url("open_api_base_url", c.open_api_base_url);
  r.url("business_api_base_url", c.business_api_base_url);
  r.string("client_key", c.client_key, need);
  r.secret("client_secret", c.client_secret, need);
  r.string("business_app_id", c.business_app_id);
  r.secret("business_app_secret", c.business_app_secret, Need::kOptional);
  parse_schedule(r, c.schedule);
  parse_limits(r, c.limits);
  r.finish();
  // An API for Business app is an id and a secret together; half of one is a mistake.
  if (r.has("business_app_id") != r.has("business_app_secret")) {
    const char* missing = r.has("business_app_id") ? "business_app_secret" : "business_app_id";
    r.fail(missing, "missing required key (business_app_id and business_app_secret go together)");
  }
}

// The API for Business app defaults to the Login Kit app.
void fill_tiktok_defaults(TikTokConfig& c) {
  if (c.business_app_id.empty()) c.business_app_id = c.client_key;
  if (c.business_app_secret.empty()) c.business_app_secret = c.client_secret;
}

// RFC 9110 token characters.
bool is_header_name(std::string_view name) {
  constexpr std::string_view kSpecials = "!#$%&'*+-.^_`|~";
  return !name.empty() && std::all_of(name.begin(), name.end(), [&](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) != 0 ||
           kSpecials.find(c) != std::string_view::npos;
  });
}

// Headers tokenwarden itself sets on a provider request.
bool reserved_header(std::string_view name) {
  std::string lower(name);
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return lower == "host" || lower == "content-type" || lower == "content-length" ||
         lower == "transfer-encoding" || lower == "user-agent" || lower == "authorization";
}

void parse_headers(MapReader& r, std::vector<HeaderConfig>& out) {
  out.clear();
  for (const std::string& name : r.keys()) {
    if (!is_header_name(name)) return r.fail(name, "not an HTTP header name");
    if (reserved_header(name)) return r.fail(name, "tokenwarden sets this header itself");
    HeaderConfig h;
    h.name = name;
    if (r.is_map(name)) {
      r.secret(name, h.secret, Need::kRequired);
    } else {
      r.string(name, h.value, Need::kRequired, Empty::kAllowed);
    }
    out.push_back(std::move(h));
  }
  r.finish();
}

void parse_probe(MapReader& r, ProbeConfig& c) {
  r.one_of("method", c.method, {"GET", "HEAD", "POST"});
  r.url("url", c.url);
  r.string("header", c.header);
  r.string("prefix", c.prefix, Need::kOptional, Empty::kAllowed);
  r.integers("valid_status", c.valid_status, 100, 599);
  r.integers("revoked_status", c.revoked_status, 100, 599);
  r.finish();
  if (c.url.empty()) r.fail("url", "missing required key");
  if (!is_header_name(c.header)) r.fail("header", "not an HTTP header name");
  for (int status : c.valid_status) {
    if (std::find(c.revoked_status.begin(), c.revoked_status.end(), status) !=
        c.revoked_status.end()) {
      r.fail("revoked_status", "status " + std::to_string(status) + " is also in valid_status");
    }
  }
}

void parse_generic_provider(MapReader& r, GenericProviderConfig& c) {
  using G = GenericProviderConfig;
  const Need need = read_enabled(r, c.enabled);
  std::string type = "oauth2";
  r.one_of("type", type, {"oauth2", "api_key"});
  c.type = type == "api_key" ? G::Type::kApiKey : G::Type::kOAuth2;
  const bool oauth2 = c.type == G::Type::kOAuth2;
  const Need oauth_need = oauth2 ? need : Need::kOptional;
  r.url("token_url", c.token_url);
  r.string("client_id", c.client_id, oauth_need);
  r.secret("client_secret", c.client_secret, oauth_need);
  std::string auth = "client_secret_basic";
  r.one_of("client_auth", auth, {"client_secret_basic", "client_secret_post"});
  c.client_auth = auth == "client_secret_post" ? G::ClientAuth::kPost : G::ClientAuth::kBasic;
  std::string grant = "refresh_token";
  r.one_of("grant", grant, {"refresh_token", "client_credentials"});
  c.grant = grant == "client_credentials" ? G::Grant::kClientCredentials : G::Grant::kRefreshToken;
  r.string("scope", c.scope);
  r.url("introspection_url", c.introspection_url);
  r.url("revocation_url", c.revocation_url);
  if (r.has("renew_at_fraction")) {
    double fraction = 2.0 / 3.0;
    r.number("renew_at_fraction", fraction, 0.05, 0.95);
    c.renew_at_fraction = fraction;
  }
  if (auto s = r.section("probe")) parse_probe(*s, c.probe);
  if (auto s = r.section("headers")) parse_headers(*s, c.headers);
  parse_schedule(r, c.schedule);
  parse_limits(r, c.limits);
  r.finish();
  if (oauth2) {
    if (c.token_url.empty() && need == Need::kRequired) {
      r.fail("token_url", "missing required key (type oauth2)");
    }
    if (r.has("probe")) r.fail("probe", "only for type api_key");
    if (r.has("renew_at_fraction") && c.schedule.renew_before) {
      r.fail("renew_at_fraction", "give renew_before or renew_at_fraction, not both");
    }
  } else {
    for (const char* key : {"token_url", "client_id", "client_secret", "client_auth", "grant",
                            "scope", "introspection_url", "revocation_url", "renew_at_fraction",
                            "refresh_every", "renew_before"}) {
      if (r.has(key)) return r.fail(key, "only for type oauth2 (API keys are never renewed)");
    }
    if (!r.has("probe") && need == Need::kRequired) {
      r.fail("probe", "missing required key (type api_key: the request that tests a key)");
    }
  }
}

void parse_generic(MapReader& r, std::vector<GenericProviderConfig>& out) {
  out.clear();
  for (const std::string& name : r.keys()) {
    auto provider = Provider::named(name);
    if (!provider) {
      return r.fail(name,
                    "a provider name is 1 to 32 characters of a-z, 0-9, _ and -, starting with a "
                    "letter");
    }
    if (provider->builtin()) {
      return r.fail(name, "is a built-in provider: configure it under providers." + name);
    }
    auto s = r.section(name);
    if (!s) return;
    GenericProviderConfig c;
    c.provider = *provider;
    parse_generic_provider(*s, c);
    out.push_back(std::move(c));
  }
  r.finish();
}

void parse_providers(MapReader& r, ProvidersConfig& c) {
  if (auto s = r.section("meta")) parse_meta(*s, c.meta);
  if (auto s = r.section("google")) parse_google(*s, c.google);
  if (auto s = r.section("tiktok")) parse_tiktok(*s, c.tiktok);
  if (auto s = r.section("generic")) parse_generic(*s, c.generic);
  r.finish();
}

void parse_http(MapReader& r, HttpConfig& c) {
  r.period("connect_timeout", c.connect_timeout);
  r.period("total_timeout", c.total_timeout);
  r.integer("max_in_flight", c.max_in_flight, 1, 100'000);
  r.integer("max_response_bytes", c.max_response_bytes, 1024, std::int64_t{1} << 30);
  r.string("ca_file", c.ca_file, Need::kOptional, Empty::kAllowed);
  r.string("user_agent", c.user_agent);
  r.finish();
}

void parse_retry(MapReader& r, RetryConfig& c) {
  r.period("initial_backoff", c.initial_backoff);
  r.period("max_backoff", c.max_backoff);
  r.number("jitter", c.jitter, 0.0, 1.0);
  r.integer("malformed_cap", c.malformed_cap, 1, 1000);
  r.finish();
  if (c.initial_backoff > c.max_backoff) {
    r.fail("max_backoff",
           "must be at least initial_backoff (" + format_duration(c.initial_backoff) + ")");
  }
}

void parse_scheduler(MapReader& r, SchedulerConfig& c) {
  r.period("lease", c.lease);
  r.integer("batch_size", c.batch_size, 1, 100'000);
  r.period("idle_poll", c.idle_poll);
  r.period("shutdown_grace", c.shutdown_grace);
  r.finish();
}

void parse_status(MapReader& r, StatusConfig& c) {
  r.string("file", c.file);
  r.string("prometheus_file", c.prometheus_file, Need::kOptional, Empty::kAllowed);
  r.period("write_every", c.write_every);
  r.period("min_interval", c.min_interval);
  r.finish();
  if (c.min_interval > c.write_every) {
    r.fail("min_interval", "must be at most write_every (" + format_duration(c.write_every) + ")");
  }
}

void parse_log(MapReader& r, LogConfig& c) {
  r.one_of("level", c.level, {"trace", "debug", "info", "warn", "error", "critical", "off"});
  r.one_of("format", c.format, {"text", "json"});
  r.period("summary_every", c.summary_every);
  r.finish();
}

void parse_api(MapReader& r, ApiConfig& c) {
  r.string("socket", c.socket);
  r.integers("allow_uids", c.allow_uids, 0, 2147483647);
  r.integers("allow_gids", c.allow_gids, 0, 2147483647);
  r.finish();
  if (!c.socket.empty() && !c.socket.starts_with('/')) {
    r.fail("socket", "must be an absolute path; got " + in_quotes(c.socket));
  }
  if (!c.socket.empty() && c.allow_uids.empty() && c.allow_gids.empty()) {
    r.fail("allow_uids",
           "missing required key (give allow_uids or allow_gids: who may use the "
           "API)");
  }
}

void parse_audit(MapReader& r, AuditConfig& c) {
  r.period_or_off("retention", c.retention);
  r.finish();
}

void parse_debug(MapReader& r, DebugConfig& c) {
  r.boolean("core_dumps", c.core_dumps);
  r.finish();
}

void parse_notify(MapReader& r, NotifyConfig& c) {
  r.string("command", c.command);
  r.period("command_timeout", c.command_timeout);
  r.url("webhook_url", c.webhook_url, MapReader::UrlKind::kSecretish);
  r.secret("webhook_secret", c.webhook_secret, Need::kOptional);
  r.period("initial_backoff", c.initial_backoff);
  r.period("max_backoff", c.max_backoff);
  r.integer("max_attempts", c.max_attempts, 1, 1000);
  r.integer("max_in_flight", c.max_in_flight, 1, 1000);
  r.finish();
  // Run without a shell and without our working directory: only an absolute path is unambiguous.
  if (!c.command.empty() && !c.command.starts_with('/')) {
    r.fail("command", "must be an absolute path; got " + in_quotes(c.command));
  }
  // A webhook is always signed; a key without a webhook is a leftover.
  if (r.has("webhook_url") != r.has("webhook_secret")) {
    const char* missing = r.has("webhook_url") ? "webhook_secret" : "webhook_url";
    r.fail(missing, "missing required key (webhook_url and webhook_secret go together)");
  }
  if (c.initial_backoff > c.max_backoff) {
    r.fail("max_backoff",
           "must be at least initial_backoff (" + format_duration(c.initial_backoff) + ")");
  }
}

void parse_sections(MapReader& r, Config& c) {
  if (auto s = r.section("storage")) parse_storage(*s, c.storage);
  if (auto s = r.section("database")) parse_database(*s, c.database);
  if (auto s = r.section("key")) parse_key(*s, c.key);
  if (auto s = r.section("providers")) parse_providers(*s, c.providers);
  if (auto s = r.section("http")) parse_http(*s, c.http);
  if (auto s = r.section("retry")) parse_retry(*s, c.retry);
  if (auto s = r.section("scheduler")) parse_scheduler(*s, c.scheduler);
  if (auto s = r.section("status")) parse_status(*s, c.status);
  if (auto s = r.section("log")) parse_log(*s, c.log);
  if (auto s = r.section("notify")) parse_notify(*s, c.notify);
  if (auto s = r.section("api")) parse_api(*s, c.api);
  if (auto s = r.section("audit")) parse_audit(*s, c.audit);
  if (auto s = r.section("debug")) parse_debug(*s, c.debug);
  r.finish();
  fill_tiktok_defaults(c.providers.tiktok);
  if (c.scheduler.lease <= c.http.total_timeout) {
    r.fail("scheduler", "lease (" + format_duration(c.scheduler.lease) +
                            ") must be longer than http.total_timeout (" +
                            format_duration(c.http.total_timeout) +
                            "): a lease that ends mid-request would let a second worker in");
  }
}

// Counts the documents of a YAML stream, up to a bound, remembering where the second starts.
class DocumentCounter final : public YAML::EventHandler {
 public:
  void OnDocumentStart(const YAML::Mark& mark) override {
    if (++documents == 2) second = mark;
  }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}

  int documents = 0;
  YAML::Mark second;
};

// Throws YAML::Exception on a syntax error.
void parse_document(Context& ctx, std::string_view yaml, Config& c) {
  const std::string text(yaml);
  // Not YAML::LoadAll: in yaml-cpp 0.7 (Debian 12) it loops forever, allocating, on some invalid
  // input such as "," (yaml-cpp issue #1040, fixed upstream by PR #1319). Counting documents
  // with a bound, then loading the only one, always ends.
  {
    std::istringstream in(text);
    YAML::Parser parser(in);
    DocumentCounter counter;
    while (counter.documents < 2 && parser.HandleNextDocument(counter)) {
    }
    if (counter.documents > 1) {
      return ctx.fail(yaml_line(counter.second), kTopLevel,
                      "expected one YAML document, found more than one");
    }
    if (counter.documents == 0) return;  // empty, or only comments: all defaults
  }
  const YAML::Node root = YAML::Load(text);
  if (!root.IsMap() && !root.IsNull()) {
    return ctx.fail(yaml_line(root.Mark()), kTopLevel,
                    "expected a map of sections, got " + std::string(kind_of(root)));
  }
  MapReader r(ctx, root, "", 1);
  parse_sections(r, c);
}

}  // namespace

TokenKind GenericProviderConfig::kind() const {
  if (type == Type::kApiKey) return TokenKind::kApiKey;
  return grant == Grant::kClientCredentials ? TokenKind::kClientCredentials
                                            : TokenKind::kRefreshToken;
}

bool ProvidersConfig::enabled(const Provider& p) const {
  if (p == Provider::kMeta) return meta.enabled;
  if (p == Provider::kGoogle) return google.enabled;
  if (p == Provider::kTikTok) return tiktok.enabled;
  const GenericProviderConfig* g = generic_named(p);
  return g != nullptr && g->enabled;
}

const ProviderLimits& ProvidersConfig::limits(const Provider& p) const {
  static const ProviderLimits kDefaults;
  if (p == Provider::kMeta) return meta.limits;
  if (p == Provider::kGoogle) return google.limits;
  if (p == Provider::kTikTok) return tiktok.limits;
  const GenericProviderConfig* g = generic_named(p);
  return g != nullptr ? g->limits : kDefaults;
}

const GenericProviderConfig* ProvidersConfig::generic_named(const Provider& p) const {
  for (const GenericProviderConfig& g : generic) {
    if (g.provider == p) return &g;
  }
  return nullptr;
}

bool ProvidersConfig::allows(const Provider& p, TokenKind kind) const {
  if (p.builtin()) return kind_allowed(p, kind);
  const GenericProviderConfig* g = generic_named(p);
  return g != nullptr && g->kind() == kind;
}

std::vector<Provider> ProvidersConfig::all() const {
  std::vector<Provider> out{Provider::kMeta, Provider::kGoogle, Provider::kTikTok};
  for (const GenericProviderConfig& g : generic)
    out.push_back(g.provider);
  return out;
}

std::string check_dsn(const std::string& dsn, DsnSource source) {
  char* err = nullptr;
  PQconninfoOption* opts = PQconninfoParse(dsn.c_str(), &err);
  if (opts == nullptr) {
    std::string why = err != nullptr ? err : "out of memory";
    PQfreemem(err);
    // libpq's message may quote the string, which may hold a password: keep only its gist.
    return "not a valid PostgreSQL connection string (" + why.substr(0, why.find_first_of("\"\n")) +
           ")";
  }
  bool has_password = false;
  for (PQconninfoOption* o = opts; o->keyword != nullptr; ++o) {
    const std::string_view k = o->keyword;
    if ((k == "password" || k == "sslpassword") && o->val != nullptr && *o->val != '\0') {
      has_password = true;
    }
  }
  PQconninfoFree(opts);
  if (has_password && source == DsnSource::kConfigFile) {
    return "holds a password; put the connection string in a file and name it with dsn_secret "
           "(e.g. {credential: tokenwarden.pgdsn}), or use libpq's ~/.pgpass";
  }
  return {};
}

Result<Secret> SecretRef::resolve() const {
  switch (source) {
    case Source::kNone:
      return Error(Errc::kConfig, "no secret configured");
    case Source::kFile:
      return secret_from_file(name, "secret file " + name);
    case Source::kEnv:
      return secret_from_env(name);
    case Source::kCredential:
      return secret_from_credential(name);
  }
  return Error(Errc::kConfig, "no secret configured");
}

Result<Config> parse_config(std::string_view yaml, std::string_view source) {
  Context ctx(source);
  Config config;
  config.source = std::string(source);
  try {
    parse_document(ctx, yaml, config);
  } catch (const YAML::ParserException& e) {
    ctx.fail_at(yaml_line(e.mark), "YAML syntax error: " + e.msg);
  } catch (const YAML::Exception& e) {
    ctx.fail_at(yaml_line(e.mark), "YAML error: " + e.msg);
  }
  if (ctx.failed()) return ctx.error();
  return config;
}

Result<Config> load_config(const std::string& path) {
  std::string text;
  if (int err = read_whole_file(path, text); err != 0) {
    return Error(Errc::kConfig, path + ": cannot read config file: " + errno_text(err));
  }
  return parse_config(text, path);
}

}  // namespace tw
