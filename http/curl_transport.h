// CurlTransport: the HttpTransport of the daemon, libcurl's multi interface driven by Boost.Asio.
//
// Thread-safety: none. A CurlTransport belongs to one single-threaded executor: create it, call
// send()/pending()/shutdown() and destroy it on that executor's thread. Callbacks run there too,
// always posted, never inside send() or shutdown().
//
// Requests: GET, or POST with `body` as the request body. TLS peers are always verified (system
// CAs, or HttpConfig::ca_file when set); only http and https URLs are accepted; redirects are not
// followed; gzip/deflate bodies are decoded. Connections are kept alive and reused. At most
// HttpConfig::max_in_flight requests run at once; the others wait in FIFO order.
//
// Failures: see HttpResponse. Timeouts come from HttpConfig (connect, total). A body larger than
// HttpConfig::max_response_bytes (after decoding) fails with kTooLarge. error_message is libcurl's
// one-line reason, never the URL or its query string. Nothing is logged.
//
// Secrets: the url, header and body copies a request keeps are wiped when it completes. (libcurl
// keeps its own copies of the URL and headers while a transfer runs and frees them unwiped; that is
// outside our reach.)
//
// Lifetime: every callback runs exactly once while the transport lives. Destroying the transport
// drops the callbacks that have not run yet, including any already posted: they are destroyed,
// never invoked. To have every callback run, call shutdown() (or wait until pending() is 0) and
// let the executor run the posted callbacks before destroying the transport. The executor's
// io_context must outlive the transport.
#pragma once

#include <cstddef>
#include <memory>
#include <utility>  // before Boost.Asio: Boost 1.74 + g++ 12 + C++20

#include <boost/asio/any_io_executor.hpp>

#include "config/config.h"
#include "core/result.h"
#include "http/transport.h"

namespace tw {

class CurlTransport final : public HttpTransport {
 public:
  // Initialises libcurl once per process. Fails (Errc::kInternal) when libcurl cannot be
  // initialised or lacks a feature we need; Errc::kConfig when max_in_flight < 1.
  static Result<std::unique_ptr<CurlTransport>> create(boost::asio::any_io_executor executor,
                                                       const HttpConfig& config);
  // Safe with requests in flight: they are aborted and their callbacks dropped (see above).
  ~CurlTransport() override;
  CurlTransport(const CurlTransport&) = delete;
  CurlTransport& operator=(const CurlTransport&) = delete;

  void send(HttpRequest request, Callback done) override;
  std::size_t pending() const override;
  void shutdown() override;

 private:
  struct Impl;
  explicit CurlTransport(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

}  // namespace tw
