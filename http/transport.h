// HttpTransport: asynchronous HTTP(S) requests on the event loop.
//
// Thread-safety: an HttpTransport belongs to one single-threaded executor (the daemon's
// io_context). send() must be called on that executor; every callback runs on it, exactly once,
// and never inside send() itself.
//
// Secrets: a request's url, headers and body may carry secrets (Meta puts them in the query
// string, OAuth in form bodies, APIs in Authorization headers). A transport never logs them, and
// wipes its copies when the request is done. Anything that logs a request uses `log_url`, which
// the request builders fill with secret query values masked.
//
// Failures: a response is either a complete HTTP response (any status; `error` is kNone) or a
// transport failure (`error` says which; `status` is 0). The transport never retries: retrying is
// the scheduler's decision.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tw {

struct HttpRequest {
  std::string method = "GET";  // GET, HEAD or POST
  std::string url;             // may contain secrets in the query string
  std::string log_url;         // the same URL with secret query values masked: safe to log
  std::vector<std::pair<std::string, std::string>> headers;  // may contain secrets
  std::string body;                                          // may contain secrets
  // Must never reach the server twice: a renewal that may rotate a refresh token. Sent on a
  // fresh connection, because libcurl silently resends a request when a reused keep-alive
  // connection turns out to be dead, and the first copy may already have been processed.
  bool once = false;
};

enum class TransportError {
  kNone,       // a complete HTTP response arrived
  kConnect,    // refused, unreachable, name not resolved
  kTimeout,    // connect or total timeout
  kTls,        // handshake failed or the certificate did not verify
  kReset,      // the connection broke: reset, closed early, truncated body
  kTooLarge,   // the body exceeded the configured maximum
  kCancelled,  // the transport shut down before the request finished
  kOther,
};

std::string_view to_string(TransportError e);

struct HttpResponse {
  TransportError error = TransportError::kNone;
  std::string error_message;  // one line from the transport (libcurl); never contains the URL
  int status = 0;
  std::map<std::string, std::string>
      headers;       // names lower-cased; a repeated header keeps the last
  std::string body;  // may contain secrets: parse, then wipe
  std::chrono::milliseconds elapsed{0};
};

class HttpTransport {
 public:
  using Callback = std::function<void(HttpResponse)>;

  virtual ~HttpTransport() = default;

  // Starts `request`; `done` gets the response later, on the transport's executor. Requests over
  // the in-flight limit wait in FIFO order.
  virtual void send(HttpRequest request, Callback done) = 0;
  // Requests started and not yet completed, including those waiting for a slot.
  virtual std::size_t pending() const = 0;
  // Fails every pending request with kCancelled (their callbacks still run, later) and refuses
  // new ones the same way.
  virtual void shutdown() = 0;
};

// Percent-encodes `s` for a URL query or an application/x-www-form-urlencoded body (RFC 3986
// unreserved characters pass through).
std::string url_encode(std::string_view s);

// Builds "a=1&b=2" from pairs, each value percent-encoded.
std::string form_encode(const std::vector<std::pair<std::string, std::string>>& fields);

// Form-style decoding: "%41" is 'A' and '+' is a space; a malformed escape is kept as it is.
std::string url_decode(std::string_view s);
// Parses "a=1&b=2" (a query string or a form body), decoding names and values; a repeated name
// keeps its last value.
std::map<std::string, std::string> form_decode(std::string_view text);

}  // namespace tw
