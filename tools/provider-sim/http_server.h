// HttpServer: a small HTTP/1.1 server (Boost.Beast) for the provider simulator and for tests.
//
// Thread-safety: the server runs on the io_context it is given; run that io_context on one thread
// or several. The handler may be called from several threads at once and must be thread-safe.
// start() and stop() may be called from any thread.
//
// Each connection serves requests in turn (keep-alive) until the client closes it, an idle timeout
// (30 s) passes, or the handler asks for a fault. TLS is on when a certificate and key are given.
// The handler decides the response and, for fault injection, how it is delivered: after a delay,
// with a truncated body, by resetting the connection, or never.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>  // before Boost.Asio: Boost 1.74 + g++ 12 + C++20
#include <vector>

#include <boost/asio/io_context.hpp>

#include "core/result.h"

namespace tw::sim {

struct Request {
  std::string method;                          // "GET", "POST", ...
  std::string target;                          // path and query, e.g. "/v25.0/debug_token?x=1"
  std::string path;                            // target without the query
  std::map<std::string, std::string> query;    // decoded query parameters (last one wins)
  std::map<std::string, std::string> headers;  // names lower-cased
  std::string body;
  std::string remote;  // peer address, for logs
};

struct Response {
  // How the response is delivered.
  enum class Delivery {
    kNormal,    // send it
    kTruncate,  // send the head and half the body, then close (Content-Length promises all)
    kReset,     // close the connection at once, sending nothing (RST via SO_LINGER 0)
    kHang,      // send nothing and keep the connection open until the client gives up
  };

  int status = 200;
  std::vector<std::pair<std::string, std::string>> headers;  // Content-Length is added
  std::string body;
  // Empty: the response has no Content-Type header (an empty body, as RFC 7009 revocation sends).
  std::string content_type = "application/json; charset=UTF-8";
  std::chrono::milliseconds delay{0};  // wait this long before delivering
  Delivery delivery = Delivery::kNormal;
};

using Handler = std::function<Response(const Request&)>;

struct TlsFiles {
  std::string cert_file;  // PEM certificate chain
  std::string key_file;   // PEM private key
};

struct ServerStats {
  std::uint64_t connections = 0;  // accepted connections
  std::uint64_t requests = 0;     // requests handled
};

class HttpServer {
 public:
  // Listens on `address`:`port` (port 0 picks a free one) and serves with `handler`. Fails with a
  // message naming the address when binding or loading the TLS files fails.
  static Result<std::unique_ptr<HttpServer>> start(boost::asio::io_context& io,
                                                   const std::string& address, std::uint16_t port,
                                                   std::optional<TlsFiles> tls, Handler handler);
  // Calls stop(). Sockets close when the io_context next runs (or when it is destroyed).
  ~HttpServer();

  std::uint16_t port() const;
  bool tls() const;
  ServerStats stats() const;
  // Stops accepting and closes every connection; pending handler work is abandoned. Once stop()
  // returns the handler is not called again (a call already running on another thread finishes).
  void stop();

 private:
  HttpServer();
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

// A self-signed certificate for 127.0.0.1, ::1 and localhost (ECDSA P-256, valid for a year),
// written as PEM files; a client that trusts `cert_file` as its CA file verifies the server.
Result<TlsFiles> write_self_signed_certificate(const std::string& directory);

}  // namespace tw::sim
