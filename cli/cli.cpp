#include "cli/cli.h"

#include <algorithm>
#include <deque>
#include <fstream>
#include <istream>
#include <memory>
#include <ostream>
#include <random>
#include <set>
#include <sstream>

#include <CLI/CLI.hpp>
#include <boost/asio/post.hpp>
#include <nlohmann/json.hpp>
#include <pwd.h>
#include <termios.h>
#include <unistd.h>

#include "api/current_token.h"
#include "config/config.h"
#include "core/log.h"
#include "core/process.h"
#include "core/secret.h"
#include "core/time.h"
#include "core/token.h"
#include "scheduler/clock.h"
#include "scheduler/policy.h"
#include "storage/crypto.h"
#include "storage/open_store.h"
#include "worker/daemon.h"

namespace tw {

namespace {

constexpr const char* kDefaultConfig = "/etc/tokenwarden/tokenwarden.yaml";
constexpr std::size_t kMaxStdin = 64 * 1024;
constexpr std::size_t kMaxField = 256;

constexpr const char* kExitCodes =
    "Exit codes: 0 success; 1 operational failure (database, key file, I/O); 2 bad usage or "
    "input, nothing changed; 3 no such token; 78 bad configuration.";

// Exit code 3 ("no such token") is not here: only the token lookups return it, so a missing key
// file or database (also kNotFound) is an operational failure.
int exit_code_for(const Error& e) {
  switch (e.code()) {
    case Errc::kConfig:
      return kExitConfig;
    case Errc::kInvalidArgument:
    case Errc::kAlreadyExists:
      return kExitUsage;
    default:
      return kExitFailure;
  }
}

int report(CliEnv& env, const Error& e) {
  env.err << "tokenwarden: error: " << e.message() << "\n";
  return exit_code_for(e);
}

Error usage(std::string message) {
  return Error(Errc::kInvalidArgument, std::move(message));
}

// Identifiers from the command line: non-empty, short, printable ASCII without spaces.
Status check_field(std::string_view name, const std::string& value, std::size_t max = kMaxField) {
  if (value.empty()) return usage(std::string(name) + " must not be empty");
  if (value.size() > max) {
    return usage(std::string(name) + " is longer than " + std::to_string(max) + " bytes");
  }
  for (unsigned char c : value) {
    if (c <= 0x20 || c >= 0x7f) {
      return usage(std::string(name) + " must be printable ASCII without spaces");
    }
  }
  return Ok();
}

// Turns off terminal echo while secrets are typed; restores it on scope exit.
class EchoOff {
 public:
  EchoOff() {
    if (tcgetattr(STDIN_FILENO, &saved_) == 0) {
      termios quiet = saved_;
      quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
      active_ = tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet) == 0;
    }
  }
  ~EchoOff() {
    if (active_) tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved_);
  }
  EchoOff(const EchoOff&) = delete;
  EchoOff& operator=(const EchoOff&) = delete;

 private:
  termios saved_{};
  bool active_ = false;
};

// A token as read from stdin: printable ASCII, no spaces, at most kMaxStdin bytes.
Status check_secret(std::string_view what, std::string_view s) {
  for (unsigned char c : s) {
    if (c <= 0x20 || c >= 0x7f) {
      return usage(std::string(what) +
                   " on stdin contains a space, a control character or a non-ASCII byte");
    }
  }
  return Ok();
}

// A generic provider's client-credentials token needs no secret to be added: the daemon asks the
// provider for one with the configured client credentials.
bool secrets_optional(const Provider& provider, TokenKind kind) {
  return !provider.builtin() && kind == TokenKind::kClientCredentials;
}

// Whether `s` holds what a token of `kind` needs, as printable ASCII; `access_where` and
// `refresh_where` say where each was expected, for the message.
Status validate_secrets(const TokenSecrets& s, const Provider& provider, TokenKind kind,
                        std::string_view access_where, std::string_view refresh_where) {
  if (auto st = check_secret("the access token", s.access_token.reveal()); !st) return st.error();
  if (auto st = check_secret("the refresh token", s.refresh_token.reveal()); !st) {
    return st.error();
  }
  if (secrets_optional(provider, kind)) return Ok();
  if (s.access_token.empty() && s.refresh_token.empty()) return usage("no token given");
  if (kind_needs_refresh_secret(kind) && s.refresh_token.empty()) {
    return usage("a " + std::string(to_string(kind)) + " needs its refresh token " +
                 std::string(refresh_where));
  }
  if (kind != TokenKind::kRefreshToken && s.access_token.empty()) {
    return usage("a " + std::string(to_string(kind)) + " needs its access token " +
                 std::string(access_where));
  }
  return Ok();
}

// Reads the secrets for `kind` from stdin: either two lines (access token, then refresh token,
// which may be empty or absent) or a JSON object {"access_token": .., "refresh_token": ..}.
Result<TokenSecrets> read_stdin_secrets(CliEnv& env, const Provider& provider, TokenKind kind) {
  const bool optional = secrets_optional(provider, kind);
  if (optional && env.stdin_is_tty) return TokenSecrets{};  // nothing to prompt for
  std::unique_ptr<EchoOff> echo_off;
  if (env.stdin_is_tty) {
    env.err << "Paste the access token, Enter, then the refresh token (or nothing), Enter, "
               "Ctrl-D. Input is hidden.\n";
    echo_off = std::make_unique<EchoOff>();
  }
  std::string raw(kMaxStdin + 1, '\0');
  env.in.read(raw.data(), static_cast<std::streamsize>(raw.size()));
  raw.resize(static_cast<std::size_t>(env.in.gcount()));
  struct Wipe {
    std::string& s;
    ~Wipe() { wipe(s); }
  } wipe_raw{raw};
  if (raw.size() > kMaxStdin) {
    return usage("stdin holds more than " + std::to_string(kMaxStdin) + " bytes: not a token");
  }

  TokenSecrets out;
  std::size_t first = raw.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && raw[first] == '{') {
    auto doc = nlohmann::json::parse(raw, nullptr, /*allow_exceptions=*/false);
    if (doc.is_discarded() || !doc.is_object()) return usage("stdin is not a valid JSON object");
    for (auto& [key, value] : doc.items()) {
      if (key != "access_token" && key != "refresh_token") {
        return usage("unknown key \"" + key +
                     "\" in the JSON on stdin (expected access_token, "
                     "refresh_token)");
      }
      if (!value.is_string()) return usage(key + " in the JSON on stdin must be a string");
      auto& s = value.get_ref<std::string&>();
      (key == "access_token" ? out.access_token : out.refresh_token) = Secret::take(s);
    }
  } else {
    std::vector<std::string> lines;
    std::size_t pos = 0;
    while (pos < raw.size()) {
      std::size_t end = raw.find('\n', pos);
      if (end == std::string::npos) end = raw.size();
      std::string line = raw.substr(pos, end - pos);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      lines.push_back(std::move(line));
      pos = end + 1;
    }
    while (!lines.empty() && lines.back().empty())
      lines.pop_back();
    if (lines.size() > 2) {
      for (auto& l : lines)
        wipe(l);
      return usage(
          "stdin has more than two lines: expected the access token, then the refresh "
          "token");
    }
    if (!lines.empty()) out.access_token = Secret::take(lines[0]);
    if (lines.size() == 2) out.refresh_token = Secret::take(lines[1]);
  }
  if (out.access_token.empty() && out.refresh_token.empty() && !optional) {
    return usage("no token on stdin");
  }
  if (auto st = validate_secrets(out, provider, kind, "on the first line of stdin",
                                 "on the second line of stdin");
      !st) {
    return st.error();
  }
  return out;
}

nlohmann::json to_json(const TokenRecord& r) {
  auto opt = [](const std::optional<SysTime>& t) -> nlohmann::json {
    return t ? nlohmann::json(format_time(*t)) : nlohmann::json(nullptr);
  };
  return {
      {"id", r.id},
      {"provider", to_string(r.provider)},
      {"kind", to_string(r.kind)},
      {"workspace_id", r.workspace_id},
      {"account_id", r.account_id},
      {"scopes", r.scopes},
      {"state", to_string(r.state)},
      {"state_since", format_time(r.state_since)},
      {"expires_at", opt(r.expires_at)},
      {"refresh_expires_at", opt(r.refresh_expires_at)},
      {"next_refresh_due", opt(r.next_refresh_due)},
      {"next_check_due", opt(r.next_check_due)},
      {"consecutive_failures", r.consecutive_failures},
      {"last_error_class", to_string(r.last_error_class)},
      {"last_error_operation",
       r.last_error_operation ? nlohmann::json(to_string(*r.last_error_operation)) : nullptr},
      {"last_error_message", r.last_error_message},
      {"last_error_at", opt(r.last_error_at)},
      {"last_refreshed_at", opt(r.last_refreshed_at)},
      {"last_checked_at", opt(r.last_checked_at)},
      {"connected_at", format_time(r.connected_at)},
      {"created_at", format_time(r.created_at)},
      {"updated_at", format_time(r.updated_at)},
      {"lease_owner",
       r.lease_owner.empty() ? nlohmann::json(nullptr) : nlohmann::json(r.lease_owner)},
      {"lease_until", opt(r.lease_until)},
      {"has_access_token", r.has_access_token},
      {"has_refresh_token", r.has_refresh_token},
  };
}

std::string error_summary(const TokenRecord& r) {
  if (r.last_error_class == ErrorClass::kNone || r.state == TokenState::kActive) return "";
  std::string s = std::string(to_string(r.last_error_class)) + ": " + r.last_error_message;
  if (s.size() > 60) s = s.substr(0, 57) + "...";
  return s;
}

void print_table(std::ostream& out, const std::vector<TokenRecord>& rows) {
  const std::vector<std::string> head{"ID",    "PROVIDER",     "KIND",       "WORKSPACE", "ACCOUNT",
                                      "STATE", "NEXT REFRESH", "NEXT CHECK", "ERROR"};
  std::vector<std::vector<std::string>> cells{head};
  for (const TokenRecord& r : rows) {
    cells.push_back({r.id, std::string(to_string(r.provider)), std::string(to_string(r.kind)),
                     r.workspace_id, r.account_id, std::string(to_string(r.state)),
                     format_time(r.next_refresh_due), format_time(r.next_check_due),
                     error_summary(r)});
  }
  std::vector<std::size_t> width(head.size(), 0);
  for (const auto& row : cells) {
    for (std::size_t i = 0; i < row.size(); ++i)
      width[i] = std::max(width[i], row[i].size());
  }
  for (const auto& row : cells) {
    std::string line;
    for (std::size_t i = 0; i < row.size(); ++i) {
      line += row[i];
      if (i + 1 < row.size()) line += std::string(width[i] - row[i].size() + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ')
      line.pop_back();
    out << line << "\n";
  }
}

void print_record(std::ostream& out, const TokenRecord& r) {
  auto line = [&out](std::string_view k, const std::string& v) {
    out << k << ":" << std::string(22 - k.size(), ' ') << (v.empty() ? "-" : v) << "\n";
  };
  line("id", r.id);
  line("provider", std::string(to_string(r.provider)));
  line("kind", std::string(to_string(r.kind)));
  line("workspace", r.workspace_id);
  line("account", r.account_id);
  line("scopes", r.scopes);
  line("state", std::string(to_string(r.state)) + " since " + format_time(r.state_since));
  line("expires at", format_time(r.expires_at));
  line("refresh expires at", format_time(r.refresh_expires_at));
  line("next refresh", r.next_refresh_due ? format_time(*r.next_refresh_due) : "not scheduled");
  line("next check", r.next_check_due ? format_time(*r.next_check_due) : "not scheduled");
  line("last refreshed", format_time(r.last_refreshed_at));
  line("last checked", format_time(r.last_checked_at));
  line("failures in a row", std::to_string(r.consecutive_failures));
  if (r.last_error_class != ErrorClass::kNone) {
    line("last error", std::string(to_string(r.last_error_class)) + " during " +
                           (r.last_error_operation ? std::string(to_string(*r.last_error_operation))
                                                   : std::string("?")) +
                           " at " + format_time(r.last_error_at) + ": " + r.last_error_message);
  } else {
    line("last error", "");
  }
  line("connected", format_time(r.connected_at));
  line("created", format_time(r.created_at));
  line("secrets", std::string(r.has_access_token ? "access token" : "") +
                      (r.has_access_token && r.has_refresh_token ? ", " : "") +
                      (r.has_refresh_token ? "refresh token" : "") + " (encrypted)");
  if (!r.lease_owner.empty()) line("lease", r.lease_owner + " until " + format_time(r.lease_until));
}

Policy make_policy(const Config& config) {
  auto rng = std::make_shared<std::mt19937_64>(std::random_device{}());
  return Policy(PolicyConfig::from(config),
                [rng] { return std::uniform_real_distribution<double>(0.0, 1.0)(*rng); });
}

// Shared state of one invocation.
struct Invocation {
  explicit Invocation(CliEnv& e) : env(e) {}

  CliEnv& env;
  std::string config_path = kDefaultConfig;
  SystemClock clock;

  Result<Config> config() {
    auto c = load_config(config_path);
    if (c && c->debug.core_dumps) {
      if (auto st = allow_core_dumps(); !st) {
        env.err << "tokenwarden: warning: debug.core_dumps: " << st.error().message() << "\n";
      }
    }
    return c;
  }

  Result<std::unique_ptr<TokenStore>> store(const Config& c, OpenMode mode) {
    return open_token_store(c.storage, c.database, c.key, env.credentials_directory, mode);
  }
};

// --- commands ---------------------------------------------------------------------------------

int cmd_keygen(Invocation& inv, const std::string& out_path) {
  auto id = write_new_key_file(out_path);
  if (!id) return report(inv.env, id.error());
  inv.env.out << "wrote key " << *id << " to " << out_path << " (mode 0600)\n";
  return kExitOk;
}

struct AddArgs {
  std::string provider, kind, workspace, account, scopes, expires_at, refresh_expires_at;
};

// What the fields of a token are called where they come from, for messages.
struct FieldNames {
  const char* workspace;
  const char* account;
  const char* scopes;
  const char* expires_at;
  const char* refresh_expires_at;
};
constexpr FieldNames kFlagNames{"--workspace", "--account", "--scopes", "--expires-at",
                                "--refresh-expires-at"};
constexpr FieldNames kJsonNames{"workspace_id", "account_id", "scopes", "expires_at",
                                "refresh_expires_at"};

Result<NewToken> parse_add(const AddArgs& a, SysTime now, const FieldNames& names = kFlagNames) {
  NewToken t;
  auto provider = parse_provider(a.provider);
  if (!provider) {
    return usage("unknown provider \"" + a.provider +
                 "\" (expected meta, google, tiktok or a provider under providers.generic)");
  }
  auto kind = parse_token_kind(a.kind);
  if (!kind) {
    return usage("unknown kind \"" + a.kind +
                 "\" (expected page_token, user_token, refresh_token, business_token, "
                 "client_credentials or api_key)");
  }
  if (provider->builtin() && !kind_allowed(*provider, *kind)) {
    return usage(std::string(to_string(*provider)) + " has no " + std::string(to_string(*kind)) +
                 " tokens");
  }
  t.provider = *provider;
  t.kind = *kind;
  if (auto st = check_field(names.workspace, a.workspace); !st) return st.error();
  if (auto st = check_field(names.account, a.account); !st) return st.error();
  if (!a.scopes.empty()) {
    if (auto st = check_field(names.scopes, a.scopes, 4096); !st) return st.error();
  }
  t.workspace_id = a.workspace;
  t.account_id = a.account;
  t.scopes = a.scopes;
  if (!a.expires_at.empty()) {
    auto e = parse_time(a.expires_at, now);
    if (!e) return usage(std::string(names.expires_at) + ": " + e.error().message());
    t.expires_at = *e;
  }
  if (!a.refresh_expires_at.empty()) {
    auto e = parse_time(a.refresh_expires_at, now);
    if (!e) return usage(std::string(names.refresh_expires_at) + ": " + e.error().message());
    t.refresh_expires_at = *e;
  }
  return t;
}

// A token of a generic provider must be of the one kind its configuration gives it (the
// built-in providers were checked by parse_add).
Status check_generic_kind(const Config& config, const NewToken& t) {
  if (t.provider.builtin() || config.providers.allows(t.provider, t.kind)) return Ok();
  const GenericProviderConfig* g = config.providers.generic_named(t.provider);
  if (g == nullptr) {
    return usage("no provider \"" + std::string(to_string(t.provider)) + "\" in " + config.source +
                 " (add it under providers.generic)");
  }
  return usage(std::string(to_string(t.provider)) + " tokens are " +
               std::string(to_string(g->kind())) + " tokens (providers.generic." +
               std::string(to_string(t.provider)) + " in " + config.source + ")");
}

// "No such token": exit 3.
int no_such_token(CliEnv& env, const std::string& id) {
  env.err << "tokenwarden: error: no token " << id << "\n";
  return kExitNotFound;
}

// Loads the configuration and opens the store, then runs `body(config, store)`. Only `add`
// creates a missing database; every other command reports it.
template <class Body>
int with_store(Invocation& inv, OpenMode mode, Body&& body) {
  auto config = inv.config();
  if (!config) return report(inv.env, config.error());
  auto store = inv.store(*config, mode);
  if (!store) return report(inv.env, store.error());
  return body(*config, **store);
}

// A worker name for leases taken by this command.
std::string cli_owner() {
  char host[256] = "unknown";
  gethostname(host, sizeof host - 1);
  return "cli:" + std::string(host) + ":" + std::to_string(getpid());
}

// Who ran this command, for the audit trail: "cli:USER@HOST:PID" (the login name, else the uid).
std::string cli_actor() {
  char host[256] = "unknown";
  gethostname(host, sizeof host - 1);
  const passwd* pw = getpwuid(getuid());
  const std::string user = pw != nullptr ? pw->pw_name : "uid " + std::to_string(getuid());
  return "cli:" + user + "@" + std::string(host) + ":" + std::to_string(getpid());
}

// Appends audit rows for a command's actions; a failure is a warning (the action is done).
void audit_cli(Invocation& inv, TokenStore& store, std::vector<AuditEntry> entries) {
  const std::string actor = cli_actor();
  for (AuditEntry& e : entries) {
    e.at = inv.clock.now();
    e.actor = actor;
  }
  if (auto st = store.append_audit(entries); !st) {
    inv.env.err << "tokenwarden: warning: " << entries.size()
                << " audit row(s) not written: " << st.error().message() << "\n";
  }
}

// One audit row about `r`.
AuditEntry audit_of(std::string action, const TokenRecord& r, std::string outcome,
                    std::string detail = "") {
  return AuditEntry{{},
                    {},
                    std::move(action),
                    r.id,
                    std::move(outcome),
                    std::string(to_string(r.provider)) + " " + std::string(to_string(r.kind)) +
                        ", workspace " + r.workspace_id + ", account " + r.account_id +
                        (detail.empty() ? "" : "; " + detail)};
}

int cmd_add(Invocation& inv, const AddArgs& args) {
  const SysTime now = inv.clock.now();
  // Validate everything before touching the database, so bad input changes nothing.
  auto token = parse_add(args, now);
  if (!token) return report(inv.env, token.error());
  auto secrets = read_stdin_secrets(inv.env, token->provider, token->kind);
  if (!secrets) return report(inv.env, secrets.error());
  return with_store(inv, OpenMode::kCreate, [&](const Config& config, TokenStore& store) {
    if (auto st = check_generic_kind(config, *token); !st) return report(inv.env, st.error());
    Policy policy = make_policy(config);
    auto result =
        store.upsert(*token, *secrets, now, [&](TokenRecord& r) { policy.schedule_new(r, now); });
    if (!result) return report(inv.env, result.error());
    const TokenRecord& r = result->record;
    audit_cli(inv, store, {audit_of(result->created ? "add" : "reconnect", r, "ok")});
    inv.env.out << (result->created ? "added " : "reconnected ") << r.id << " ("
                << to_string(r.provider) << " " << to_string(r.kind) << ", account " << r.account_id
                << "); next refresh "
                << (r.next_refresh_due ? format_time(*r.next_refresh_due) : "not scheduled")
                << ", next check " << format_time(r.next_check_due) << "\n";
    if (!Policy::renewable(r) && !policy.checkable(r)) {
      inv.env.err << "tokenwarden: warning: tokenwarden stores " << to_string(r.provider) << " "
                  << to_string(r.kind)
                  << " tokens encrypted but can neither renew nor check them yet\n";
    }
    if (!config.providers.enabled(r.provider)) {
      inv.env.err << "tokenwarden: warning: provider " << to_string(r.provider)
                  << " is not enabled in " << config.source
                  << ": the daemon will not renew or check this token until it is\n";
    }
    return kExitOk;
  });
}

struct ImportArgs {
  std::string provider, kind, workspace;
  std::size_t batch = 1000;
  bool check_now = false;
};

// One line of an import: a JSON object whose string fields override `defaults`; expiry times are
// a number (Unix seconds), a string in --expires-at's formats, or null. Keys it does not know are
// added to `ignored`. The line's secrets are moved out of the parsed document and wiped there.
Result<TokenImport> parse_import_line(std::string& line, const AddArgs& defaults, SysTime now,
                                      std::set<std::string>& ignored) {
  auto doc = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  wipe(line);
  if (doc.is_discarded() || !doc.is_object()) return usage("not a JSON object");
  AddArgs a = defaults;
  TokenImport out;
  std::optional<Error> bad;
  for (auto& [key, value] : doc.items()) {
    std::string* field = key == "provider"             ? &a.provider
                         : key == "kind"               ? &a.kind
                         : key == "workspace_id"       ? &a.workspace
                         : key == "account_id"         ? &a.account
                         : key == "scopes"             ? &a.scopes
                         : key == "expires_at"         ? &a.expires_at
                         : key == "refresh_expires_at" ? &a.refresh_expires_at
                                                       : nullptr;
    if (key == "access_token" || key == "refresh_token") {
      if (!value.is_string()) {
        bad = usage(key + " must be a string");
        continue;
      }
      auto& text = value.get_ref<std::string&>();
      (key == "access_token" ? out.secrets.access_token : out.secrets.refresh_token) =
          Secret::take(text);
    } else if (field == nullptr) {
      ignored.insert(key);
    } else if (value.is_null()) {
      field->clear();
    } else if (value.is_number_integer() && field == &a.expires_at) {
      a.expires_at = "@" + std::to_string(value.get<std::int64_t>());
    } else if (value.is_number_integer() && field == &a.refresh_expires_at) {
      a.refresh_expires_at = "@" + std::to_string(value.get<std::int64_t>());
    } else if (value.is_string()) {
      *field = value.get<std::string>();
    } else {
      bad = usage(key + " must be a string");
    }
  }
  if (bad) return *bad;
  if (a.provider.empty() || a.kind.empty()) {
    return usage("provider and kind are required (in the line, or --provider and --kind)");
  }
  auto token = parse_add(a, now, kJsonNames);
  if (!token) return token.error();
  out.token = std::move(*token);
  if (auto st = validate_secrets(out.secrets, out.token.provider, out.token.kind, "(access_token)",
                                 "(refresh_token)");
      !st) {
    return st.error();
  }
  return out;
}

int cmd_import(Invocation& inv, const ImportArgs& args) {
  const SysTime now = inv.clock.now();
  AddArgs defaults;
  defaults.provider = args.provider;
  defaults.kind = args.kind;
  defaults.workspace = args.workspace;
  return with_store(inv, OpenMode::kCreate, [&](const Config& config, TokenStore& store) {
    Policy policy = make_policy(config);
    const ScheduleFn schedule = [&](TokenRecord& r) {
      policy.schedule_new(r, now);
      if (args.check_now && r.next_check_due) r.next_check_due = now;
    };
    std::set<std::string> ignored;
    std::set<std::string> not_enabled;
    std::size_t added = 0;
    std::size_t reconnected = 0;
    std::size_t line_no = 0;
    std::size_t batch_first_line = 1;
    std::vector<TokenImport> batch;
    batch.reserve(args.batch);
    auto commit = [&]() -> Status {
      if (batch.empty()) return Ok();
      auto results = store.upsert_batch(batch, now, schedule);
      batch.clear();
      if (!results) return results.error();
      std::vector<AuditEntry> rows;
      for (const UpsertResult& r : *results) {
        rows.push_back(audit_of("import", r.record, r.created ? "added" : "reconnected"));
      }
      audit_cli(inv, store, std::move(rows));
      for (const UpsertResult& r : *results) {
        ++(r.created ? added : reconnected);
        if (!config.providers.enabled(r.record.provider)) {
          not_enabled.insert(std::string(to_string(r.record.provider)));
        }
      }
      return Ok();
    };
    auto stop = [&](const Error& e, std::string_view where) {
      inv.env.err << "tokenwarden: error: " << where << e.message() << "\n"
                  << "tokenwarden: " << added + reconnected << " tokens from lines before "
                  << batch_first_line << " were imported, none after; fix the input and import "
                  << "from line " << batch_first_line << " on (tail -n +" << batch_first_line
                  << "): importing a token again replaces its secrets, and one the daemon has "
                     "renewed since must not get its old ones back\n";
      return exit_code_for(e);
    };
    std::string line;
    while (std::getline(inv.env.in, line)) {
      ++line_no;
      if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
      if (line.size() > kMaxStdin) {
        wipe(line);
        return stop(usage("longer than " + std::to_string(kMaxStdin) + " bytes"),
                    "line " + std::to_string(line_no) + ": ");
      }
      auto item = parse_import_line(line, defaults, now, ignored);
      if (!item) return stop(item.error(), "line " + std::to_string(line_no) + ": ");
      if (auto st = check_generic_kind(config, item->token); !st) {
        return stop(st.error(), "line " + std::to_string(line_no) + ": ");
      }
      batch.push_back(std::move(*item));
      if (batch.size() >= args.batch) {
        if (auto st = commit(); !st) return stop(st.error(), "");
        batch_first_line = line_no + 1;
      }
    }
    if (auto st = commit(); !st) return stop(st.error(), "");
    inv.env.out << "imported " << added + reconnected << " tokens (" << added << " added, "
                << reconnected << " reconnected) from " << line_no << " lines\n";
    if (!ignored.empty()) {
      std::string names;
      for (const auto& k : ignored)
        names += (names.empty() ? "" : ", ") + k;
      inv.env.err << "tokenwarden: warning: ignored keys: " << names << "\n";
    }
    for (const auto& p : not_enabled) {
      inv.env.err << "tokenwarden: warning: provider " << p << " is not enabled in "
                  << config.source << ": the daemon leaves its tokens alone until it is\n";
    }
    return kExitOk;
  });
}

struct ListArgs {
  std::string provider, state, workspace;
  bool json = false;
};

int cmd_list(Invocation& inv, const ListArgs& args) {
  ListFilter filter;
  if (!args.provider.empty()) {
    filter.provider = parse_provider(args.provider);
    if (!filter.provider) {
      return report(inv.env, usage("unknown provider \"" + args.provider + "\""));
    }
  }
  if (!args.state.empty()) {
    filter.state = parse_token_state(args.state);
    if (!filter.state) return report(inv.env, usage("unknown state \"" + args.state + "\""));
  }
  if (!args.workspace.empty()) filter.workspace_id = args.workspace;
  return with_store(inv, OpenMode::kExisting, [&](const Config&, TokenStore& store) {
    auto rows = store.list(filter);
    if (!rows) return report(inv.env, rows.error());
    if (args.json) {
      nlohmann::json arr = nlohmann::json::array();
      for (const auto& r : *rows)
        arr.push_back(to_json(r));
      inv.env.out << arr.dump(2) << "\n";
    } else {
      print_table(inv.env.out, *rows);
    }
    return kExitOk;
  });
}

int cmd_show(Invocation& inv, const std::string& id, bool json) {
  return with_store(inv, OpenMode::kExisting, [&](const Config&, TokenStore& store) {
    auto row = store.find(id);
    if (!row) return report(inv.env, row.error());
    if (!*row) return no_such_token(inv.env, id);
    if (json) {
      inv.env.out << to_json(**row).dump(2) << "\n";
    } else {
      print_record(inv.env.out, **row);
    }
    return kExitOk;
  });
}

// tokenwarden token get ID: the current access token on stdout, for scripts. Only a token that
// works is printed; otherwise exit 1 (3: no such token) with why on stderr. Each read is audited.
int cmd_token_get(Invocation& inv, const std::string& id) {
  return with_store(inv, OpenMode::kExisting, [&](const Config&, TokenStore& store) {
    auto got = current_token(store, id, inv.clock.now());
    if (!got) return report(inv.env, got.error());
    if (got->why == Unusable::kNotFound) return no_such_token(inv.env, id);
    if (!got->token) {
      inv.env.err << "tokenwarden: error: " << got->message << "\n";
      return kExitFailure;
    }
    audit_cli(inv, store, {audit_of("read", got->token->record, "ok", "token get")});
    inv.env.out << got->token->access_token.reveal() << "\n";
    inv.env.out.flush();
    return kExitOk;
  });
}

// tokenwarden remove --revoke: revokes the token at its provider (RFC 7009), then deletes it. The
// token is leased first, so no worker renews it meanwhile; when the provider refuses or cannot be
// reached, nothing is deleted.
int cmd_revoke_and_remove(Invocation& inv, const std::string& id) {
  auto config = inv.config();
  if (!config) return report(inv.env, config.error());
  LogConfig quiet = config->log;
  quiet.level = "warn";
  auto built = Daemon::build(*config, inv.env.credentials_directory, process_owner("cli:"),
                             make_logger("tokenwarden", quiet), OpenMode::kExisting);
  if (!built) return report(inv.env, built.error());
  Daemon& d = **built;
  const std::string owner = cli_owner();
  auto claimed = d.store->claim(id, inv.clock.now(), owner, std::chrono::minutes(1));
  if (!claimed && claimed.error().code() == Errc::kNotFound) return no_such_token(inv.env, id);
  if (!claimed) return report(inv.env, claimed.error());
  const TokenRecord r = std::move(*claimed);
  auto release = [&] { (void)d.store->save(r, nullptr, owner, LeaseAction::kRelease); };
  ProviderClient* client = nullptr;
  for (const auto& c : d.clients) {
    if (c->provider() == r.provider) client = c.get();
  }
  if (client == nullptr || !client->can_revoke()) {
    release();
    return report(inv.env, usage("provider " + std::string(to_string(r.provider)) +
                                 " has no revocation endpoint (revocation_url) in " +
                                 config->source + ": nothing was removed"));
  }
  if (r.renewal_in_doubt_since) {
    // The provider may hold a newer refresh token than ours; revoking ours (RFC 7009 answers 200
    // for unknown tokens) would leave the live grant behind.
    release();
    return report(inv.env, usage("a renewal of " + id + " is in doubt (since " +
                                 format_time(*r.renewal_in_doubt_since) +
                                 "): the stored token may not be the live one. Renew it first "
                                 "(tokenwarden refresh " +
                                 id +
                                 "), or revoke it at the "
                                 "provider by hand; nothing was removed"));
  }
  auto secrets = d.store->read_secrets(r);
  if (!secrets) {
    release();
    return report(inv.env, secrets.error());
  }
  std::optional<Status> revoked;
  client->revoke(r, *secrets, [&](Status st) {
    revoked = std::move(st);
    d.http->shutdown();
    boost::asio::post(d.io, [&d] { d.io.stop(); });
  });
  d.io.run();
  if (!revoked || !*revoked) {
    release();
    inv.env.err << "tokenwarden: error: " << id << " was not revoked and is kept: "
                << (revoked ? revoked->error().message() : "no answer") << "\n";
    return kExitFailure;
  }
  auto removed = d.store->remove(id);
  if (!removed) {
    inv.env.err << "tokenwarden: error: " << id << " was revoked at " << to_string(r.provider)
                << " but not removed (" << removed.error().message() << "): run tokenwarden remove "
                << id << "\n";
    return kExitFailure;
  }
  audit_cli(inv, *d.store, {audit_of("revoke", r, "ok", "revoked at the provider and removed")});
  inv.env.out << "revoked " << id << " at " << to_string(r.provider) << " and removed it\n";
  return kExitOk;
}

int cmd_remove(Invocation& inv, const std::string& id, bool revoke) {
  if (revoke) return cmd_revoke_and_remove(inv, id);
  return with_store(inv, OpenMode::kExisting, [&](const Config&, TokenStore& store) {
    auto removed = store.remove(id);
    if (!removed) return report(inv.env, removed.error());
    if (!*removed) return no_such_token(inv.env, id);
    audit_cli(inv, store, {AuditEntry{{}, {}, "remove", id, "ok", "deleted with its secrets"}});
    inv.env.out << "removed " << id << "\n";
    return kExitOk;
  });
}

// Switches a token off (no renewals, no checks) or back on. Takes the token's lease, so it never
// races a worker that is renewing it.
int cmd_set_enabled(Invocation& inv, const std::string& id, bool enable) {
  return with_store(inv, OpenMode::kExisting, [&](const Config& config, TokenStore& store) {
    const SysTime now = inv.clock.now();
    const std::string owner = cli_owner();
    auto claimed = store.claim(id, now, owner, std::chrono::minutes(1));
    if (!claimed && claimed.error().code() == Errc::kNotFound) return no_such_token(inv.env, id);
    if (!claimed) return report(inv.env, claimed.error());
    TokenRecord r = std::move(*claimed);
    const TokenState before = r.state;
    if (enable && (before == TokenState::kNeedsReauth || before == TokenState::kRevoked)) {
      (void)store.save(r, nullptr, owner, LeaseAction::kRelease);
      return report(inv.env, usage("token " + id + " is " + std::string(to_string(before)) +
                                   ": reconnect it with `tokenwarden add` and fresh tokens"));
    }
    if (enable == (before != TokenState::kDisabled)) {
      (void)store.save(r, nullptr, owner, LeaseAction::kRelease);
      inv.env.out << id << " is already " << to_string(before) << "\n";
      return kExitOk;
    }
    r.state = enable ? TokenState::kActive : TokenState::kDisabled;
    r.state_since = now;
    r.updated_at = now;
    r.consecutive_failures = 0;
    make_policy(config).schedule_new(r, now);
    if (auto st = store.save(r, nullptr, owner, LeaseAction::kRelease); !st) {
      return report(inv.env, st.error());
    }
    audit_cli(
        inv, store,
        {audit_of(enable ? "enable" : "disable", r,
                  std::string(to_string(before)) + " -> " + std::string(to_string(r.state)))});
    inv.env.out << (enable ? "enabled " : "disabled ") << id << "; next refresh "
                << (r.next_refresh_due ? format_time(*r.next_refresh_due) : "not scheduled")
                << ", next check "
                << (r.next_check_due ? format_time(*r.next_check_due) : "not scheduled") << "\n";
    return kExitOk;
  });
}

int cmd_run(Invocation& inv) {
  auto config = inv.config();
  if (!config) return report(inv.env, config.error());
  auto log = make_logger("tokenwarden", config->log);
  auto daemon = Daemon::build(*config, inv.env.credentials_directory, process_owner(), log,
                              OpenMode::kCreate);
  if (!daemon) {
    log->critical("cannot start: {}", daemon.error().message());
    return exit_code_for(daemon.error());
  }
  if (auto st = (*daemon)->enable_notices(); !st) {
    log->critical("cannot start: {}", st.error().message());
    return exit_code_for(st.error());
  }
  if (auto st = (*daemon)->enable_api(); !st) {
    log->critical("cannot start: {}", st.error().message());
    return exit_code_for(st.error());
  }
  if ((*daemon)->clients.empty()) {
    log->warn("no provider is enabled in {}: nothing will be renewed or checked", config->source);
  }
  return (*daemon)->run();
}

struct ForcedArgs {
  std::vector<std::string> ids;
  bool all = false;
  std::string provider;
  bool verbose = false;
};

// tokenwarden refresh / check: runs the operation now on the chosen tokens, safely beside a
// running daemon (each token is leased first), and prints one line per token.
int cmd_forced(Invocation& inv, const ForcedArgs& args, Operation op) {
  const int chosen =
      (args.ids.empty() ? 0 : 1) + (args.all ? 1 : 0) + (args.provider.empty() ? 0 : 1);
  if (chosen != 1) {
    return report(inv.env, usage("give token ids, or --all, or --provider P (exactly one)"));
  }
  std::optional<Provider> provider;
  if (!args.provider.empty()) {
    provider = parse_provider(args.provider);
    if (!provider) return report(inv.env, usage("unknown provider \"" + args.provider + "\""));
  }
  auto config = inv.config();
  if (!config) return report(inv.env, config.error());
  LogConfig quiet = config->log;
  if (!args.verbose) quiet.level = "warn";
  auto log = make_logger("tokenwarden", quiet);
  auto built = Daemon::build(*config, inv.env.credentials_directory, process_owner("cli:"), log,
                             OpenMode::kExisting);
  if (!built) return report(inv.env, built.error());
  Daemon& d = **built;

  std::vector<std::string> ids = args.ids;
  if (ids.empty()) {
    ListFilter filter;
    filter.provider = provider;
    auto rows = d.store->list(filter);
    if (!rows) return report(inv.env, rows.error());
    for (const TokenRecord& r : *rows) {
      if (!state_scheduled(r.state)) continue;  // needs_reauth, revoked, disabled: by id only
      if (op == Operation::kRefresh && !Policy::renewable(r)) continue;
      ids.push_back(r.id);
    }
    if (ids.empty()) {
      inv.env.out << "no token to " << to_string(op) << "\n";
      return kExitOk;
    }
  }
  int code = kExitOk;
  d.worker->run_now(ids, op, [&](std::vector<ForcedResult> results) {
    bool failed = false, missing = false;
    for (const ForcedResult& r : results) {
      const bool ok = r.status == ForcedResult::Status::kOk;
      inv.env.out << r.id << "  " << to_string(op) << "  " << (ok ? "ok" : "FAILED") << "  "
                  << to_string(r.state) << "  " << r.message << "\n";
      missing = missing || r.status == ForcedResult::Status::kNotFound;
      failed = failed || (!ok && r.status != ForcedResult::Status::kNotFound);
    }
    code = failed ? kExitFailure : missing ? kExitNotFound : kExitOk;
    d.http->shutdown();
    boost::asio::post(d.io, [&d] { d.io.stop(); });
  });
  d.io.run();
  return code;
}

struct StatusArgs {
  bool json = false;
  std::string file;
  std::string stale_after;
};

// tokenwarden status: reads the daemon's status file. Exit 0 healthy; 1 tokens need
// re-authorisation or the daemon's last tick is stale (a dead or stuck daemon); 2 on error.
int cmd_status(Invocation& inv, const StatusArgs& args) {
  constexpr int kHealthy = 0, kAttention = 1, kError = 2;
  std::string path = args.file;
  Seconds stale = std::chrono::minutes(3);
  if (path.empty() || args.stale_after.empty()) {
    auto config = inv.config();
    if (!config && path.empty()) {
      inv.env.err << "tokenwarden: error: " << config.error().message() << "\n";
      return kError;
    }
    if (config) {
      if (path.empty()) path = config->status.file;
      stale = config->status.write_every * 3;
    }
  }
  if (!args.stale_after.empty()) {
    auto d = parse_duration(args.stale_after);
    if (!d || d->count() <= 0) {
      inv.env.err << "tokenwarden: error: --stale-after: "
                  << (d ? "must be greater than zero" : d.error().message()) << "\n";
      return kError;
    }
    stale = std::chrono::duration_cast<Seconds>(*d);
  }
  std::ifstream in(path);
  if (!in) {
    inv.env.err << "tokenwarden: error: cannot read the status file " << path
                << " (is the daemon running? status.file in the config)\n";
    return kError;
  }
  std::stringstream text;
  text << in.rdbuf();
  auto s = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (s.is_discarded() || !s.is_object() || !s.contains("tokens") || !s.contains("written")) {
    inv.env.err << "tokenwarden: error: " << path << " is not a tokenwarden status file\n";
    return kError;
  }
  // A file with the right keys but wrong types is as unreadable as one that does not parse.
  try {
    const SysTime now = inv.clock.now();
    auto age = [&](const char* key) -> std::optional<Seconds> {
      if (!s[key].is_string()) return std::nullopt;
      auto t = parse_time(s[key].get<std::string>(), now);
      if (!t) return std::nullopt;
      return now - *t;
    };
    const auto tick_age = age("last_tick");
    const auto written_age = age("written");
    const bool is_stale = !tick_age || *tick_age > stale || !written_age || *written_age > stale;
    const std::uint64_t reauth = s.value("needs_reauth_total", std::uint64_t{0});
    const int code = is_stale ? kAttention : reauth > 0 ? kAttention : kHealthy;
    if (args.json) {
      inv.env.out << text.str();
      if (!text.str().empty() && text.str().back() != '\n') inv.env.out << "\n";
      return code;
    }
    auto ago = [](const std::optional<Seconds>& a) {
      return a ? format_duration(std::chrono::duration_cast<Millis>(*a)) + " ago"
               : std::string("never");
    };
    std::ostream& out = inv.env.out;
    out << "tokenwarden " << s.value("version", "?") << ", " << s.value("owner", "?")
        << ", started " << s.value("started", "?") << "\n";
    out << "last loop tick " << ago(tick_age) << ", status written " << ago(written_age) << "\n";
    const nlohmann::json& total = s["tokens"]["total"];
    // States in the order an operator reads them, then any this version does not know.
    auto states_of = [](const nlohmann::json& counts, bool skip_zero) {
      std::string line;
      std::vector<std::string> order{"active", "failing", "needs_reauth", "revoked", "disabled"};
      for (const auto& [state, n] : counts.items()) {
        if (std::find(order.begin(), order.end(), state) == order.end()) order.push_back(state);
      }
      for (const std::string& state : order) {
        const std::uint64_t n = counts.value(state, std::uint64_t{0});
        if (n > 0 || !skip_zero) line += " " + std::to_string(n) + " " + state;
      }
      return line;
    };
    out << "tokens:" << states_of(total, false) << "\n";
    for (const auto& [provider, states] : s["tokens"]["by_provider"].items())
      out << "  " << provider << ":" << states_of(states, true) << "\n";
    out << "next due: "
        << (s["next_due"].is_string() ? s["next_due"].get<std::string>() : "nothing");
    if (s["oldest_overdue"].is_object()) {
      out << "; oldest overdue: " << s["oldest_overdue"].value("token_id", "?") << " by "
          << format_duration(std::chrono::seconds(s["oldest_overdue"].value("overdue_seconds", 0)))
          << "";
    }
    out << "\n";
    for (const char* op : {"refreshes", "checks"}) {
      const nlohmann::json& h = s["last_hour"][op];
      std::uint64_t failed = 0;
      std::string classes;
      for (const auto& [cls, n] : h["failed"].items()) {
        failed += n.get<std::uint64_t>();
        classes += " " + cls + "=" + std::to_string(n.get<std::uint64_t>());
      }
      out << "last hour, " << (std::string(op) == "refreshes" ? "renewals" : "checks") << ": "
          << h.value("ok", std::uint64_t{0}) << " ok, " << failed << " failed" << classes << "\n";
    }
    if (reauth > 0) {
      out << reauth << " token(s) need re-authorisation (the customer must reconnect):\n";
      for (const auto& t : s["needs_reauth"]) {
        out << "  " << t.value("token_id", "?") << "  " << t.value("provider", "?") << "  "
            << t.value("workspace_id", "?") << "  " << t.value("account_id", "?") << "  "
            << t.value("state", "?") << " since " << t.value("since", "?") << ": "
            << t.value("reason", "") << "\n";
      }
    }
    if (is_stale) {
      out << "STALE: the daemon has not ticked or written its status for over "
          << format_duration(std::chrono::duration_cast<Millis>(stale)) << "\n";
    } else {
      out << (reauth > 0 ? "NEEDS ATTENTION" : "OK") << "\n";
    }
    return code;
  } catch (const nlohmann::json::exception& e) {
    inv.env.err << "tokenwarden: error: " << path << " is not a tokenwarden status file ("
                << e.what() << ")\n";
    return kError;
  }
}

struct RekeyArgs {
  std::string new_key;
  std::size_t batch = 500;
};

// tokenwarden rekey: re-encrypts every secret under an older key with the target key (--new-key,
// or key.file), in batches, beside running daemons. Every key in the configuration opens; the
// target key must be one of them, so every process started with this configuration can read
// what rekey writes.
int cmd_rekey(Invocation& inv, const RekeyArgs& args) {
  auto config = inv.config();
  if (!config) return report(inv.env, config.error());
  auto ring =
      load_key_ring(config->key.file, config->key.previous_files, inv.env.credentials_directory);
  if (!ring) return report(inv.env, ring.error());
  bool staged = false;  // the target is a previous key: processes still seal with key.file's key
  if (!args.new_key.empty()) {
    auto target = load_key_file(args.new_key);
    if (!target) return report(inv.env, target.error());
    if (ring->find(target->id()) == nullptr) {
      return report(inv.env,
                    usage("the key in " + args.new_key + " (id " + target->id_hex() +
                          ") is not in " + config->source +
                          ": every tokenwarden process must be able to read what rekey writes. "
                          "Add it to key.previous_files (or make it key.file), restart every "
                          "tokenwarden process, then run rekey again"));
    }
    staged = target->id() != ring->current().id();
    std::vector<Key> others{ring->current()};
    for (const Key& k : ring->previous()) {
      if (k.id() != target->id()) others.push_back(k);
    }
    ring = KeyRing(std::move(*target), std::move(others));
  }
  const std::string target_id = ring->current().id_hex();
  auto opened =
      open_token_store(config->storage, config->database, std::move(*ring), OpenMode::kExisting);
  if (!opened) return report(inv.env, opened.error());
  TokenStore& store = **opened;
  auto total = store.count_sealed_with_old_keys();
  if (!total) return report(inv.env, total.error());
  inv.env.out << "rekey: " << *total << " token(s) to re-encrypt with key " << target_id << ", "
              << args.batch << " per transaction" << std::endl;
  // After the first batch, then at most once a second, and at the end.
  std::optional<std::chrono::steady_clock::time_point> last;
  auto show = [&](std::size_t done) {
    const auto now = std::chrono::steady_clock::now();
    if (last && now - *last < std::chrono::seconds(1) && done < *total) return;
    last = now;
    inv.env.out << "rekey: " << done << " of " << *total << " re-encrypted ("
                << (*total == 0 ? 100 : std::min<std::size_t>(100, done * 100 / *total)) << "%)"
                << std::endl;
  };
  auto n = store.rekey(args.batch, show);
  if (!n) {
    inv.env.err << "tokenwarden: error: " << n.error().message()
                << " (what was re-encrypted is committed: run rekey again to go on)\n";
    return exit_code_for(n.error());
  }
  audit_cli(inv, store,
            {AuditEntry{{},
                        {},
                        "rekey",
                        "",
                        "ok",
                        "re-encrypted " + std::to_string(*n) + " token(s) with key " + target_id}});
  inv.env.out << "re-encrypted " << *n << " token(s) with key " << target_id << "\n";
  // A process still sealing with another key may have renewed a token meanwhile.
  auto left = store.count_sealed_with_old_keys();
  if (!left) return report(inv.env, left.error());
  if (*left == 0) {
    inv.env.out << "no secret is sealed with another key"
                << (staged ? ": make this key key.file (the old one in key.previous_files), "
                             "restart every tokenwarden process and run rekey once more; "
                             "then the old key can be retired\n"
                           : ": the previous key files can be retired\n");
    return kExitOk;
  }
  if (staged) {
    inv.env.out << *left << " token(s) were renewed meanwhile under key.file's key, as expected "
                << "while the new key is only a previous one: make it key.file (the old one in "
                   "key.previous_files), restart every tokenwarden process, then run rekey "
                   "again\n";
    return kExitOk;
  }
  inv.env.err << "tokenwarden: error: " << *left
              << " token(s) were sealed again with an old key while this ran: restart every "
                 "tokenwarden process with the new key configuration, then run rekey again "
                 "before retiring the old key\n";
  return kExitFailure;
}

struct AuditArgs {
  std::string token;
  std::size_t limit = 100;
  bool json = false;
};

nlohmann::json to_json(const AuditRow& row) {
  return {{"seq", row.seq},
          {"at", format_time(row.entry.at)},
          {"actor", row.entry.actor},
          {"action", row.entry.action},
          {"token_id", row.entry.token_id},
          {"outcome", row.entry.outcome},
          {"detail", row.entry.detail},
          {"hash", audit_hash_hex(row.hash)}};
}

// tokenwarden audit [--token ID]: the newest `limit` rows (a token's history with --token), oldest
// first.
int cmd_audit(Invocation& inv, const AuditArgs& args) {
  return with_store(inv, OpenMode::kExisting, [&](const Config&, TokenStore& store) {
    std::deque<AuditRow> last;
    std::int64_t after = 0;
    for (;;) {
      auto rows = store.read_audit(after, 10000, args.token);
      if (!rows) return report(inv.env, rows.error());
      for (AuditRow& r : *rows) {
        after = r.seq;
        last.push_back(std::move(r));
        if (last.size() > args.limit) last.pop_front();
      }
      if (rows->size() < 10000) break;
    }
    if (args.json) {
      nlohmann::json out = nlohmann::json::array();
      for (const AuditRow& r : last)
        out.push_back(to_json(r));
      inv.env.out << out.dump(2) << "\n";
      return kExitOk;
    }
    for (const AuditRow& r : last) {
      inv.env.out << format_time(r.entry.at) << "  #" << r.seq << "  " << r.entry.actor << "  "
                  << r.entry.action << "  " << (r.entry.token_id.empty() ? "-" : r.entry.token_id)
                  << "  " << r.entry.outcome
                  << (r.entry.detail.empty() ? "" : "  (" + r.entry.detail + ")") << "\n";
    }
    if (last.empty()) inv.env.out << "no audit rows\n";
    return kExitOk;
  });
}

// tokenwarden audit verify: walks the whole chain. Exit 0 intact, 1 broken.
int cmd_audit_verify(Invocation& inv) {
  return with_store(inv, OpenMode::kExisting, [&](const Config&, TokenStore& store) {
    // A prune that runs while we read moves the anchor: then read again (a few times at most).
    std::optional<AuditVerifier> done;
    std::optional<AuditAnchor> anchor;
    for (int attempt = 0; attempt < 3 && !done; ++attempt) {
      auto a = store.audit_anchor();
      if (!a) return report(inv.env, a.error());
      AuditVerifier verify(*a);
      std::int64_t after = 0;
      for (;;) {
        auto rows = store.read_audit(after, 10000, "");
        if (!rows) return report(inv.env, rows.error());
        for (const AuditRow& r : *rows) {
          verify.add(r);
          after = r.seq;
        }
        if (rows->size() < 10000 || !verify.problem().empty()) break;
      }
      verify.finish();
      auto again = store.audit_anchor();
      if (!again) return report(inv.env, again.error());
      if (verify.problem().empty() || (again->seq == a->seq && again->hash == a->hash)) {
        done.emplace(std::move(verify));
        anchor = *a;
      }
    }
    if (!done) {
      inv.env.err << "tokenwarden: error: the audit trail kept being pruned while it was read: "
                     "run audit verify again\n";
      return kExitFailure;
    }
    AuditVerifier& verify = *done;
    if (!verify.problem().empty()) {
      inv.env.err << "tokenwarden: error: the audit trail was tampered with: " << verify.problem()
                  << "\n";
      return kExitFailure;
    }
    if (verify.rows() == 0) {
      inv.env.out << "audit trail intact: no rows yet\n";
      return kExitOk;
    }
    inv.env.out << "audit trail intact: rows " << verify.first_seq() << " to "
                << verify.first_seq() + verify.rows() - 1 << " (" << verify.rows() << " rows"
                << (anchor->seq > 0 ? ", " + std::to_string(anchor->seq) + " older ones pruned"
                                    : std::string())
                << "); head hash " << audit_hash_hex(verify.head())
                << " (keep it elsewhere to pin the chain)\n";
    return kExitOk;
  });
}

struct MigrateArgs {
  std::string from, to;
  std::size_t batch = 1000;
  bool force = false;
};

// The store a --from / --to argument names: sqlite:PATH or postgres:DSN; with nothing after the
// colon, the configuration's database.path or storage.postgres. A DSN on the command line must
// not hold a password (argv is visible to every user of the host).
Result<std::unique_ptr<TokenStore>> open_named_store(Invocation& inv, const Config& config,
                                                     const std::string& flag,
                                                     const std::string& spec, OpenMode mode) {
  const std::size_t colon = spec.find(':');
  const std::string kind = spec.substr(0, colon);
  const std::string rest = colon == std::string::npos ? "" : spec.substr(colon + 1);
  StorageConfig storage = config.storage;
  DatabaseConfig database = config.database;
  if (kind == "sqlite") {
    storage.backend = StorageConfig::Backend::kSqlite;
    if (!rest.empty()) database.path = rest;
  } else if (kind == "postgres") {
    storage.backend = StorageConfig::Backend::kPostgres;
    if (!rest.empty()) {
      if (auto bad = check_dsn(rest, DsnSource::kConfigFile); !bad.empty()) {
        return usage(flag + ": the connection string " + bad);
      }
      storage.postgres.dsn = rest;
      storage.postgres.dsn_secret = {};
    } else if (storage.postgres.dsn.empty() && storage.postgres.dsn_secret.empty()) {
      return usage(flag + " postgres: names the configuration's storage.postgres, which " +
                   inv.config_path + " does not set; give postgres:DSN");
    }
  } else {
    return usage(flag +
                 " must be sqlite:PATH or postgres:DSN (or sqlite: / postgres: for the "
                 "configured one), not \"" +
                 kind + ":...\"");
  }
  return open_token_store(storage, database, config.key, inv.env.credentials_directory, mode);
}

int cmd_migrate(Invocation& inv, const MigrateArgs& args) {
  auto config = inv.config();
  if (!config) return report(inv.env, config.error());
  auto from = open_named_store(inv, *config, "--from", args.from, OpenMode::kExisting);
  if (!from) return report(inv.env, from.error());
  auto to = open_named_store(inv, *config, "--to", args.to, OpenMode::kCreate);
  if (!to) return report(inv.env, to.error());
  TokenStore& src = **from;
  TokenStore& dst = **to;
  std::ostream& err = inv.env.err;
  if (src.describe() == dst.describe()) {
    return report(inv.env, usage("--from and --to name the same store: " + src.describe()));
  }
  // Copying into a store that already holds tokens would mix two schedules.
  auto present = dst.count_by_state();
  if (!present) return report(inv.env, present.error());
  std::size_t already = 0;
  for (const StateCounts& c : *present)
    already += c.count;
  if (already > 0) {
    return report(inv.env, Error(Errc::kAlreadyExists,
                                 dst.describe() + " already holds " + std::to_string(already) +
                                     " token(s): migrate copies into an empty store only"));
  }
  // A daemon still working on the source would renew tokens after their copy was taken, and
  // the copy would hold refresh tokens the provider has already retired.
  const SysTime now = inv.clock.now();
  std::size_t total = 0;
  for (std::string after;;) {
    auto batch = src.read_sealed(after, args.batch);
    if (!batch) return report(inv.env, batch.error());
    for (const SealedToken& t : *batch) {
      if (!args.force && !t.record.lease_owner.empty() && t.record.lease_until &&
          *t.record.lease_until > now) {
        return report(
            inv.env,
            Error(Errc::kLeaseLost,
                  "token " + t.record.id + " is being worked on by " + t.record.lease_owner +
                      " until " + format_time(*t.record.lease_until) +
                      ": stop every tokenwarden "
                      "process using " +
                      src.describe() + " first (or pass --force if that process is dead)"));
      }
    }
    total += batch->size();
    if (batch->size() < args.batch) break;
    after = batch->back().record.id;
  }
  // The copy: sealed secrets as they are, batch by batch, never decrypted.
  std::size_t copied = 0;
  for (std::string after;;) {
    auto batch = src.read_sealed(after, args.batch);
    if (!batch) return report(inv.env, batch.error());
    if (auto st = dst.write_sealed(*batch); !st) {
      err << "tokenwarden: error: " << st.error().message() << "\n"
          << "tokenwarden: " << copied << " of " << total << " token(s) were copied to "
          << dst.describe() << " before this; empty it before running migrate again\n";
      return exit_code_for(st.error());
    }
    copied += batch->size();
    err << "tokenwarden: copied " << copied << " of " << total << " token(s)\n";
    if (batch->size() < args.batch) break;
    after = batch->back().record.id;
  }
  // Proof that the copy is whole, usable and still current: every secret opens with the
  // configured key ring (in memory only), as it does in the source, and the source has not
  // changed since it was read (a process still using it would have changed it).
  std::size_t opened = 0;
  std::vector<std::string> unreadable;
  std::string changed;
  for (std::string after;;) {
    auto batch = dst.read_sealed(after, args.batch);
    if (!batch) return report(inv.env, batch.error());
    auto source = src.read_sealed(after, args.batch);
    if (!source) return report(inv.env, source.error());
    for (std::size_t i = 0; i < batch->size() && changed.empty(); ++i) {
      const SealedToken& t = (*batch)[i];
      if (i >= source->size()) {
        changed = t.record.id;
        break;
      }
      SealedToken was = (*source)[i];
      was.record.lease_owner.clear();  // leases are not copied
      was.record.lease_until.reset();
      if (was.record != t.record || was.access_token != t.access_token ||
          was.refresh_token != t.refresh_token ||
          was.reauth_notified_since != t.reauth_notified_since) {
        changed = t.record.id;
      }
    }
    if (changed.empty() && source->size() != batch->size()) {
      changed = source->size() > batch->size() ? (*source)[batch->size()].record.id : "?";
    }
    for (const SealedToken& t : *batch) {
      if (dst.read_secrets(t.record)) {
        ++opened;
      } else if (src.read_secrets(t.record)) {
        unreadable.push_back(t.record.id);
      } else {
        err << "tokenwarden: warning: token " << t.record.id
            << " does not decrypt with the configured key, in the source either\n";
      }
    }
    if (batch->size() < args.batch) break;
    after = batch->back().record.id;
  }
  if (!changed.empty()) {
    err << "tokenwarden: error: " << src.describe() << " changed while it was copied (token "
        << changed << "): a tokenwarden process is still using it. Stop every instance, empty "
        << dst.describe() << ", and run migrate again\n";
    return kExitFailure;
  }
  if (!unreadable.empty()) {
    err << "tokenwarden: error: " << unreadable.size() << " token(s) decrypt in the source but "
        << "not in the copy, first " << unreadable.front() << "\n";
    return kExitFailure;
  }
  inv.env.out << "migrated " << copied << " token(s) from " << src.describe() << " to "
              << dst.describe() << "; " << opened
              << " decrypt with the configured key.\nNext: point storage (storage.backend, "
                 "storage.postgres or database.path) at the new store in "
              << inv.config_path << ", then start tokenwarden.\n";
  return copied == total ? kExitOk : kExitFailure;
}

}  // namespace

int run_cli(const std::vector<std::string>& args, CliEnv& env) {
  Invocation inv(env);
  CLI::App app{"tokenwarden " TW_VERSION
               ": keeps third-party OAuth tokens (Meta, Google, TikTok) alive.\n"
               "Tokens are stored AES-256-GCM encrypted in SQLite or PostgreSQL; secrets are read "
               "only from stdin and never printed.",
               "tokenwarden"};
  app.footer(kExitCodes);
  app.require_subcommand(1);
  app.add_option("-c,--config", inv.config_path, "Configuration file (YAML)")
      ->envname("TOKENWARDEN_CONFIG")
      ->capture_default_str();
  app.set_version_flag("--version", TW_VERSION);

  std::string key_out;
  auto* keygen =
      app.add_subcommand("keygen",
                         "Write a new random 256-bit encryption key to a file with mode 0600.\n"
                         "Refuses to overwrite an existing file. Does not read the configuration.");
  keygen->add_option("--out", key_out, "Path of the new key file")->required();

  AddArgs add_args;
  auto* add = app.add_subcommand(
      "add",
      "Add a token, or reconnect an existing one (same provider and account): its secrets are\n"
      "replaced and a needs_reauth or revoked state is cleared.\n"
      "Secrets come from stdin, never from arguments: line 1 the access token, line 2 the\n"
      "refresh token (if any); or a JSON object {\"access_token\": ..., \"refresh_token\": ...}.\n"
      "Kinds per provider: meta page_token (refresh secret: the long-lived user token) or\n"
      "user_token; google refresh_token; tiktok business_token or refresh_token; any provider\n"
      "client_credentials or api_key (checked, never renewed).");
  add->add_option("--provider", add_args.provider,
                  "meta, google, tiktok or a provider under providers.generic")
      ->required();
  add->add_option("--kind", add_args.kind,
                  "page_token, user_token, refresh_token, business_token, "
                  "client_credentials or api_key")
      ->required();
  add->add_option("--workspace", add_args.workspace, "The customer's workspace id")->required();
  add->add_option("--account", add_args.account, "The provider's account, page or business id")
      ->required();
  add->add_option("--scopes", add_args.scopes, "Granted scopes, as the provider lists them");
  add->add_option("--expires-at", add_args.expires_at,
                  "When the access token expires: 2026-12-31T00:00:00Z, @<unix>, or +60d");
  add->add_option("--refresh-expires-at", add_args.refresh_expires_at,
                  "When the refresh token expires, same formats");

  ImportArgs import_args;
  auto* import = app.add_subcommand(
      "import",
      "Add or reconnect many tokens from stdin: one JSON object per line, with the keys\n"
      "provider, kind, workspace_id, account_id, access_token, refresh_token, and optionally\n"
      "scopes, expires_at and refresh_expires_at (Unix seconds, or --expires-at's formats).\n"
      "--provider, --kind and --workspace fill keys a line leaves out; other keys are ignored\n"
      "(listed in a warning). Tokens are committed in batches: on a bad line the import stops,\n"
      "says which tokens were stored, and can be run again (an imported token is reconnected).");
  import->add_option("--provider", import_args.provider, "Default provider for every line");
  import->add_option("--kind", import_args.kind, "Default kind for every line");
  import->add_option("--workspace", import_args.workspace, "Default workspace for every line");
  import
      ->add_option("--batch", import_args.batch,
                   "Tokens per transaction (one durable commit; the daemon waits for each)")
      ->check(CLI::Range(1, 10000))
      ->capture_default_str();
  import->add_flag(
      "--check-now", import_args.check_now,
      "Health-check every imported token at once, not at its slot within the hour\n"
      "(finds the dead ones of a migrated fleet now; the providers' rate limits apply)");

  ListArgs list_args;
  auto* list = app.add_subcommand("list",
                                  "List tokens: ids, state, due times, last error. "
                                  "Never a secret.");
  list->add_option("--provider", list_args.provider, "Only this provider");
  list->add_option("--state", list_args.state,
                   "Only this state: active, failing, needs_reauth, revoked, disabled");
  list->add_option("--workspace", list_args.workspace, "Only this workspace");
  list->add_flag("--json", list_args.json, "Print a JSON array instead of a table");

  std::string show_id;
  bool show_json = false;
  auto* show = app.add_subcommand("show", "Show everything known about one token but its secrets.");
  show->add_option("id", show_id, "Token id (tok_...)")->required();
  show->add_flag("--json", show_json, "Print JSON");

  std::string remove_id;
  bool remove_revoke = false;
  auto* remove = app.add_subcommand("remove", "Delete a token and its encrypted secrets.");
  remove->add_option("id", remove_id, "Token id (tok_...)")->required();
  remove->add_flag("--revoke", remove_revoke,
                   "First revoke it at the provider (a generic provider's revocation_url, RFC "
                   "7009); if that fails, nothing is removed");

  std::string disable_id, enable_id;
  auto* disable = app.add_subcommand(
      "disable",
      "Stop renewing and checking a token, keeping it and its secrets (state disabled).");
  disable->add_option("id", disable_id, "Token id (tok_...)")->required();
  auto* enable = app.add_subcommand(
      "enable",
      "Resume a disabled token: it is scheduled again from now. A needs_reauth or\n"
      "revoked token cannot be enabled; reconnect it with `add` instead.");
  enable->add_option("id", enable_id, "Token id (tok_...)")->required();

  auto* run = app.add_subcommand(
      "run",
      "Run the daemon: renew and health-check every due token until SIGTERM or SIGINT.\n"
      "Logs go to stderr (journald under systemd). Other tokenwarden processes, on this\n"
      "host or others sharing the database, may run beside it: leases keep them apart.");

  ForcedArgs refresh_args;
  auto* refresh = app.add_subcommand(
      "refresh",
      "Renew tokens now, whatever their schedule, and print one line per token.\n"
      "Safe while the daemon runs. Exit code 1 if any renewal failed.");
  refresh->add_option("ids", refresh_args.ids, "Token ids (tok_...)");
  refresh->add_flag("--all", refresh_args.all, "Every active or failing renewable token");
  refresh->add_option("--provider", refresh_args.provider, "Every such token of one provider");
  refresh->add_flag("-v,--verbose", refresh_args.verbose, "Log each request on stderr");

  ForcedArgs check_args;
  auto* check = app.add_subcommand("check",
                                   "Health-check tokens now and print one line per token.\n"
                                   "Safe while the daemon runs. Exit code 1 if any check failed.");
  check->add_option("ids", check_args.ids, "Token ids (tok_...)");
  check->add_flag("--all", check_args.all, "Every active or failing token");
  check->add_option("--provider", check_args.provider, "Every such token of one provider");
  check->add_flag("-v,--verbose", check_args.verbose, "Log each request on stderr");

  StatusArgs status_args;
  auto* status = app.add_subcommand(
      "status",
      "Summarise the running daemon's status file, as a monitoring check.\n"
      "Exit codes for this command: 0 healthy; 1 tokens need re-authorisation or the\n"
      "daemon's last tick is stale; 2 the status file cannot be read.");
  status->add_flag("--json", status_args.json, "Print the status file as it is");
  status->add_option("--file", status_args.file, "Status file (default: status.file)");
  status->add_option("--stale-after", status_args.stale_after,
                     "A tick older than this is stale (default: 3 x status.write_every)");

  std::string token_get_id;
  auto* token_cmd = app.add_subcommand("token", "Hand out a token to a script or application.");
  token_cmd->require_subcommand(1);
  auto* token_get = token_cmd->add_subcommand(
      "get",
      "Print the token's current access token (an API key for api_key tokens) on stdout, and\n"
      "nothing else. Refuses (exit 1, why on stderr) a token that is expired, needs\n"
      "re-authorisation, was revoked or is disabled. Each read is in the audit trail.");
  token_get->add_option("id", token_get_id, "Token id (tok_...)")->required();

  AuditArgs audit_args;
  auto* audit = app.add_subcommand(
      "audit",
      "Show the audit trail: every renewal, check, state change and CLI action, with time,\n"
      "actor and outcome, never a secret. `audit verify` checks its hash chain.");
  audit->add_option("--token", audit_args.token, "Only this token's history");
  audit->add_option("--limit", audit_args.limit, "The newest N rows (default 100)")
      ->check(CLI::Range(std::size_t{1}, std::size_t{10000000}));
  audit->add_flag("--json", audit_args.json, "JSON array");
  auto* audit_verify = audit->add_subcommand(
      "verify",
      "Check that no audit row was changed, deleted or inserted since it was written.\n"
      "Exit codes for this command: 0 intact; 1 tampered with (the first break is named).");

  RekeyArgs rekey_args;
  auto* rekey = app.add_subcommand(
      "rekey",
      "Re-encrypt every secret sealed with another key with the current key (key.file), or\n"
      "with --new-key's, in batches, while daemons run. Resumable: after a crash or an error,\n"
      "run it again. The target key must be in the configuration (key.file or\n"
      "key.previous_files), so every process can read what it writes. docs/operations.md\n"
      "section 10 has the rotation steps.");
  rekey->add_option("--new-key", rekey_args.new_key,
                    "Key file to re-encrypt with (default: key.file's key)");
  rekey->add_option("--batch", rekey_args.batch, "Tokens per transaction (default 500)")
      ->check(CLI::Range(std::size_t{1}, std::size_t{100000}));

  MigrateArgs migrate_args;
  auto* migrate = app.add_subcommand(
      "migrate",
      "Copy every token, its schedule and its state from one store to an empty other, e.g.\n"
      "from the SQLite file to PostgreSQL when scaling out. Secrets are copied sealed, never\n"
      "decrypted; afterwards each is opened in memory with the configured key to prove the\n"
      "copy usable. Stop every tokenwarden process using the source first.");
  migrate
      ->add_option("--from", migrate_args.from,
                   "sqlite:PATH or postgres:DSN; sqlite: or postgres: alone means the configured "
                   "database.path or storage.postgres")
      ->required();
  migrate
      ->add_option("--to", migrate_args.to,
                   "The same forms. A DSN given here must not hold a password: use the "
                   "configured storage.postgres.dsn_secret or libpq's ~/.pgpass")
      ->required();
  migrate->add_option("--batch", migrate_args.batch, "Tokens per transaction")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  migrate->add_flag("--force", migrate_args.force,
                    "Copy even though a token is leased (the process holding it is known dead)");

  std::string simulate_dir;
  int simulate_days = 35;
  auto* simulate = app.add_subcommand(
      "simulate",
      "Offline, no network: create a key, a database and sample tokens in a new directory,\n"
      "then run the real scheduler and store over simulated weeks under a fake clock, with\n"
      "simulated provider replies, and print every renewal and failure. Shows what the\n"
      "schedule does; does not read the configuration.");
  simulate->add_option("--dir", simulate_dir,
                       "Directory for its files (default: a new one in /tmp)");
  simulate->add_option("--days", simulate_days, "Days of schedule to simulate")
      ->check(CLI::Range(1, 3650))
      ->capture_default_str();

  std::vector<std::string> argv_rev(args.rbegin(), args.rend());
  if (!argv_rev.empty()) argv_rev.pop_back();  // the program name
  try {
    app.parse(argv_rev);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) {
      app.exit(e, env.out, env.err);
      return kExitOk;
    }
    env.err << "tokenwarden: error: " << e.what() << "\n"
            << "Run 'tokenwarden --help' or 'tokenwarden <command> --help'.\n";
    return kExitUsage;
  }

  if (*keygen) return cmd_keygen(inv, key_out);
  if (*add) return cmd_add(inv, add_args);
  if (*import) return cmd_import(inv, import_args);
  if (*list) return cmd_list(inv, list_args);
  if (*show) return cmd_show(inv, show_id, show_json);
  if (*remove) return cmd_remove(inv, remove_id, remove_revoke);
  if (*disable) return cmd_set_enabled(inv, disable_id, false);
  if (*enable) return cmd_set_enabled(inv, enable_id, true);
  if (*rekey) return cmd_rekey(inv, rekey_args);
  if (*token_get) return cmd_token_get(inv, token_get_id);
  if (*audit_verify) return cmd_audit_verify(inv);
  if (*audit) return cmd_audit(inv, audit_args);
  if (*migrate) return cmd_migrate(inv, migrate_args);
  if (*status) return cmd_status(inv, status_args);
  if (*run) return cmd_run(inv);
  if (*refresh) return cmd_forced(inv, refresh_args, Operation::kRefresh);
  if (*check) return cmd_forced(inv, check_args, Operation::kCheck);
  if (*simulate) return run_simulation(simulate_dir, simulate_days, env);
  return kExitUsage;
}

}  // namespace tw
