#include "api/local_api.h"

#include <algorithm>
#include <chrono>

#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>
#include <sys/socket.h>
#include <sys/stat.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include "api/current_token.h"
#include "core/secret.h"

namespace tw {

namespace http = boost::beast::http;
using local = boost::asio::local::stream_protocol;

namespace {

constexpr std::string_view kPrefix = "/v1/tokens/";

std::string error_body(std::string_view message) {
  return nlohmann::json{{"error", message}}.dump();
}

// Appends `s` to `out` as the inside of a JSON string.
void append_escaped(std::string& out, std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (u < 0x20) {
      out += "\\u00";
      out += kHex[u >> 4];
      out += kHex[u & 15];
    } else {
      out += c;
    }
  }
}

}  // namespace

class LocalApi::Session : public std::enable_shared_from_this<Session> {
 public:
  Session(LocalApi& api, local::socket socket)
      : api_(api), alive_(api.alive_), socket_(std::move(socket)), timer_(socket_.get_executor()) {}

  void start() {
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(socket_.native_handle(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
      return close();
    }
    peer_ = "api:uid=" + std::to_string(cred.uid) + ",pid=" + std::to_string(cred.pid);
    const auto& o = api_.options_;
    const bool allowed =
        std::find(o.allow_uids.begin(), o.allow_uids.end(), cred.uid) != o.allow_uids.end() ||
        std::find(o.allow_gids.begin(), o.allow_gids.end(), cred.gid) != o.allow_gids.end();
    if (!allowed) {
      api_.log_->warn(
          "local API: refused uid {} gid {} pid {}: not in api.allow_uids or "
          "api.allow_gids",
          cred.uid, cred.gid, cred.pid);
      return respond(http::status::forbidden, error_body("this user may not use the API"));
    }
    timer_.expires_after(std::chrono::seconds(10));
    timer_.async_wait([self = shared_from_this()](boost::system::error_code ec) {
      if (!ec && !self->responding_) self->close();
    });
    parser_.header_limit(4096);
    parser_.body_limit(4096);
    http::async_read(socket_, buffer_, parser_,
                     [self = shared_from_this()](boost::system::error_code ec, std::size_t) {
                       self->on_read(ec);
                     });
  }

 private:
  void on_read(boost::system::error_code ec) {
    if (ec || !*alive_) return close();
    timer_.cancel();  // the request is in; a renewal may take up to http.total_timeout
    const auto& req = parser_.get();
    const std::string target(req.target());
    if (!target.starts_with(kPrefix)) {
      return respond(http::status::not_found, error_body("no such endpoint"));
    }
    std::string id = target.substr(kPrefix.size());
    bool refresh = false;
    if (id.ends_with("/refresh")) {
      id.resize(id.size() - 8);
      refresh = true;
    }
    if (id.empty() || id.find_first_of("/?#%") != std::string::npos) {
      return respond(http::status::not_found, error_body("no such endpoint"));
    }
    const http::verb want = refresh ? http::verb::post : http::verb::get;
    if (req.method() != want) {
      res_.set(http::field::allow, refresh ? "POST" : "GET");
      return respond(http::status::method_not_allowed, error_body("method not allowed"));
    }
    if (!refresh) return answer(id);
    api_.refresh(id, [self = shared_from_this(), id](const ForcedResult& r) {
      if (!*self->alive_) return self->close();
      using S = ForcedResult::Status;
      if (r.status == S::kNotFound) {
        return self->respond(http::status::not_found, error_body("no token " + id));
      }
      if (r.status != S::kOk) {
        // Busy: another process holds the token (try again); refused: it is not renewed (an API
        // key, a disabled token); cancelled: shutting down; failed: the provider said no.
        const http::status status = r.status == S::kBusy || r.status == S::kRefused
                                        ? http::status::conflict
                                    : r.status == S::kCancelled ? http::status::service_unavailable
                                                                : http::status::bad_gateway;
        return self->respond(
            status, nlohmann::json{{"error", r.message}, {"state", to_string(r.state)}}.dump());
      }
      self->answer(id);
    });
  }

  // The token as GET answers it.
  void answer(const std::string& id) {
    auto got = current_token(api_.store_, id, api_.clock_.now());
    if (!got) return respond(http::status::service_unavailable, error_body(got.error().message()));
    if (got->why == Unusable::kNotFound) {
      return respond(http::status::not_found, error_body(got->message));
    }
    if (!got->token) return respond(http::status::conflict, error_body(got->message));
    const TokenRecord& r = got->token->record;
    AuditEntry row{api_.clock_.now(), peer_, "read", r.id, "ok", "local API"};
    if (auto st = api_.store_.append_audit({&row, 1}); !st) {
      api_.log_->error("audit row not written: {}", st.error().message());
    }
    nlohmann::json doc{{"id", r.id},
                       {"provider", to_string(r.provider)},
                       {"kind", to_string(r.kind)},
                       {"state", to_string(r.state)},
                       {"expires_at", r.expires_at ? nlohmann::json(format_time(*r.expires_at))
                                                   : nlohmann::json(nullptr)}};
    // The secret goes in last, by hand and reserved up front, so that no JSON object and no
    // reallocated buffer keeps a copy of it (the body is wiped once sent).
    const std::string head = doc.dump();
    const std::string_view secret = got->token->access_token.reveal();
    std::string body;
    body.reserve(head.size() + 6 * secret.size() + 20);
    body.append(head, 0, head.size() - 1);
    body += ",\"access_token\":\"";
    append_escaped(body, secret);
    body += "\"}";
    respond(http::status::ok, std::move(body));
  }

  void respond(http::status status, std::string body) {
    responding_ = true;
    timer_.cancel();
    res_.result(status);
    res_.version(11);
    res_.set(http::field::content_type, "application/json");
    res_.set(http::field::cache_control, "no-store");
    res_.keep_alive(false);
    res_.body() = std::move(body);
    res_.prepare_payload();
    http::async_write(socket_, res_,
                      [self = shared_from_this()](boost::system::error_code, std::size_t) {
                        wipe(self->res_.body());
                        self->close();
                      });
  }

  void close() {
    timer_.cancel();
    boost::system::error_code ignored;
    socket_.shutdown(local::socket::shutdown_both, ignored);
    socket_.close(ignored);
  }

  LocalApi& api_;
  std::shared_ptr<bool> alive_;  // false once the LocalApi is gone: api_ must not be touched
  local::socket socket_;
  boost::asio::steady_timer timer_;
  boost::beast::flat_buffer buffer_;
  http::request_parser<http::string_body> parser_;
  http::response<http::string_body> res_;
  std::string peer_;
  bool responding_ = false;
};

LocalApi::LocalApi(boost::asio::any_io_executor executor, LocalApiOptions options,
                   TokenStore& store, Worker& worker, const Clock& clock,
                   std::shared_ptr<spdlog::logger> log)
    : executor_(executor),
      acceptor_(executor),
      options_(std::move(options)),
      store_(store),
      worker_(worker),
      clock_(clock),
      log_(std::move(log)) {}

LocalApi::~LocalApi() {
  *alive_ = false;
  stop();
}

Result<std::unique_ptr<LocalApi>> LocalApi::listen(boost::asio::any_io_executor executor,
                                                   const std::string& path, LocalApiOptions options,
                                                   TokenStore& store, Worker& worker,
                                                   const Clock& clock,
                                                   std::shared_ptr<spdlog::logger> log) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return Error(Errc::kAlreadyExists, "api.socket " + path + " exists and is not a socket");
    }
    // A socket file refusing connections is left over from a crash; anything else (it answers,
    // or we may not connect) is someone's: left alone.
    local::socket probe(executor);
    boost::system::error_code ec;
    probe.connect(local::endpoint(path), ec);
    if (ec != boost::asio::error::connection_refused) {
      return Error(Errc::kAlreadyExists, "api.socket " + path + " is in use" +
                                             (ec ? " (" + ec.message() + ")" : std::string()));
    }
    ::unlink(path.c_str());
  }
  std::unique_ptr<LocalApi> api(
      new LocalApi(executor, std::move(options), store, worker, clock, std::move(log)));
  boost::system::error_code ec;
  api->acceptor_.open(local(), ec);
  if (!ec) api->acceptor_.bind(local::endpoint(path), ec);
  if (!ec) api->acceptor_.listen(boost::asio::socket_base::max_listen_connections, ec);
  if (ec) return Error(Errc::kIo, "api.socket " + path + ": " + ec.message());
  if (::chmod(path.c_str(), 0660) != 0 || ::lstat(path.c_str(), &st) != 0) {
    return Error(Errc::kIo, "api.socket " + path + ": cannot set its mode to 0660");
  }
  api->path_ = path;
  api->inode_ = {st.st_dev, st.st_ino};
  api->where_ = path;
  api->accept();
  return api;
}

Result<std::unique_ptr<LocalApi>> LocalApi::adopt(boost::asio::any_io_executor executor, int fd,
                                                  LocalApiOptions options, TokenStore& store,
                                                  Worker& worker, const Clock& clock,
                                                  std::shared_ptr<spdlog::logger> log) {
  std::unique_ptr<LocalApi> api(
      new LocalApi(executor, std::move(options), store, worker, clock, std::move(log)));
  boost::system::error_code ec;
  api->acceptor_.assign(local(), fd, ec);
  if (ec) return Error(Errc::kIo, "the socket systemd passed: " + ec.message());
  api->where_ = "the socket systemd passed (fd " + std::to_string(fd) + ")";
  api->accept();
  return api;
}

void LocalApi::stop() {
  boost::system::error_code ignored;
  acceptor_.close(ignored);
  // Our socket file only: another process may have replaced it since.
  struct stat st {};
  if (!path_.empty() && ::lstat(path_.c_str(), &st) == 0 && st.st_dev == inode_.first &&
      st.st_ino == inode_.second) {
    ::unlink(path_.c_str());
  }
  path_.clear();
  // Callers still waiting for a renewal are answered now: the worker stops without calling back.
  auto waiting = std::move(refreshing_);
  refreshing_.clear();
  ForcedResult cancelled;
  cancelled.op = Operation::kRefresh;
  cancelled.status = ForcedResult::Status::kCancelled;
  cancelled.message = "tokenwarden is shutting down";
  for (auto& [id, waiters] : waiting) {
    cancelled.id = id;
    for (auto& w : waiters)
      w(cancelled);
  }
}

void LocalApi::accept() {
  acceptor_.async_accept(
      [this, alive = alive_](boost::system::error_code ec, local::socket socket) {
        if (!*alive || !acceptor_.is_open()) return;
        if (ec) {
          log_->warn("local API: accept failed: {}", ec.message());
        } else {
          std::make_shared<Session>(*this, std::move(socket))->start();
        }
        accept();
      });
}

void LocalApi::refresh(const std::string& id, std::function<void(const ForcedResult&)> done) {
  auto [it, first] = refreshing_.try_emplace(id);
  it->second.push_back(std::move(done));
  if (!first) return;  // one is under way: this caller waits for its result
  worker_.run_now({id}, Operation::kRefresh,
                  [this, alive = alive_, id](std::vector<ForcedResult> results) {
                    if (!*alive) return;
                    auto node = refreshing_.extract(id);
                    if (node.empty()) return;  // answered by stop()
                    ForcedResult r = results.empty() ? ForcedResult{} : results.front();
                    for (auto& waiter : node.mapped())
                      waiter(r);
                  });
}

int systemd_listen_fd() {
  if (sd_listen_fds(1) < 1) return -1;
  return sd_is_socket_unix(SD_LISTEN_FDS_START, SOCK_STREAM, 1, nullptr, 0) > 0
             ? SD_LISTEN_FDS_START
             : -1;
}

}  // namespace tw
