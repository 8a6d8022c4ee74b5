// LocalApi: the HTTP API for applications on this host, over a Unix socket (never TCP).
//
//   GET  /v1/tokens/{id}          200 {"id","provider","kind","state","access_token",
//                                      "expires_at"}; 404 no such token; 409 the token is
//                                      expired, dead or empty (why in "error")
//   POST /v1/tokens/{id}/refresh  renews now, then answers as GET. A renewal of that token
//                                 already under way through this API is joined, not repeated:
//                                 50 concurrent calls make one provider request. 502 when the
//                                 renewal failed; 409 when the token is not renewed (an API key,
//                                 disabled) or held by another process (try again); 503 when
//                                 shutting down.
//
// Peers: the kernel's SO_PEERCRED identity of the connecting process is checked against
// allow_uids and allow_gids (its primary group); anyone else gets 403 and nothing more. Every
// token handed out is an audit row ("read", actor "api:uid=U,pid=P"). One request per connection
// (Connection: close), 10 s to send it, 4 KiB of headers and 4 KiB of body at most.
//
// Thread-safety: everything runs on the executor given at construction (the daemon's loop);
// stop() must be called there too. The store, worker and clock must outlive it.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>  // before Boost.Asio: Boost 1.74 + g++ 12 + C++20
#include <vector>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <spdlog/logger.h>
#include <sys/types.h>

#include "core/result.h"
#include "scheduler/clock.h"
#include "storage/token_store.h"
#include "worker/worker.h"

namespace tw {

struct LocalApiOptions {
  std::vector<uid_t> allow_uids;
  std::vector<gid_t> allow_gids;
};

class LocalApi {
 public:
  // Creates the socket at `path` (a stale socket file left by a crash is replaced; anything else
  // there is refused), mode 0660, and serves it.
  static Result<std::unique_ptr<LocalApi>> listen(boost::asio::any_io_executor executor,
                                                  const std::string& path, LocalApiOptions options,
                                                  TokenStore& store, Worker& worker,
                                                  const Clock& clock,
                                                  std::shared_ptr<spdlog::logger> log);
  // Serves on `fd`, a listening Unix stream socket handed over by systemd (socket activation);
  // takes ownership of it.
  static Result<std::unique_ptr<LocalApi>> adopt(boost::asio::any_io_executor executor, int fd,
                                                 LocalApiOptions options, TokenStore& store,
                                                 Worker& worker, const Clock& clock,
                                                 std::shared_ptr<spdlog::logger> log);
  ~LocalApi();

  // Stops accepting; connections in progress finish on their own.
  void stop();

  // For the daemon's log line: where it listens.
  const std::string& where() const { return where_; }

  class Session;

 private:
  LocalApi(boost::asio::any_io_executor executor, LocalApiOptions options, TokenStore& store,
           Worker& worker, const Clock& clock, std::shared_ptr<spdlog::logger> log);
  void accept();
  // Runs `done` with the result of a renewal of `id`, starting one unless one is under way.
  void refresh(const std::string& id, std::function<void(const ForcedResult&)> done);

  boost::asio::any_io_executor executor_;
  boost::asio::local::stream_protocol::acceptor acceptor_;
  LocalApiOptions options_;
  TokenStore& store_;
  Worker& worker_;
  const Clock& clock_;
  std::shared_ptr<spdlog::logger> log_;
  std::string where_;
  std::string path_;  // the socket file we created (removed by stop()); empty when adopted
  std::pair<dev_t, ino_t> inode_{};  // of path_, so that stop() removes only our own file
  std::map<std::string, std::vector<std::function<void(const ForcedResult&)>>> refreshing_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

// The listening socket systemd passed (LISTEN_FDS, socket activation), or -1 when there is none.
int systemd_listen_fd();

}  // namespace tw
