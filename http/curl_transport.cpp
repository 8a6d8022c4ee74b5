// libcurl's multi_socket interface on Boost.Asio, on the pattern of curl's
// docs/examples/multi-uv.c: one multi handle, one steady_timer for CURLMOPT_TIMERFUNCTION, and per
// socket curl tells us about a posix::stream_descriptor whose waits are re-armed while curl still
// wants them and which is release()d (never closed: curl owns the fd) on CURL_POLL_REMOVE.
//
// Asio completion handlers hold a weak_ptr to the Impl: a handler that was already queued when
// the transport was destroyed finds it gone and does nothing.
#include "http/curl_transport.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <chrono>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <curl/curl.h>
#include <openssl/crypto.h>

#include "core/secret.h"

namespace tw {

namespace asio = boost::asio;

namespace {

// One request, from send() until its callback is posted. Owned by CurlTransport::Impl; the easy
// handle's CURLOPT_PRIVATE points here.
struct Transfer {
  HttpRequest request;
  HttpTransport::Callback done;
  CURL* easy = nullptr;
  curl_slist* header_list = nullptr;
  HttpResponse response;
  std::size_t max_body = 0;
  bool too_large = false;
  std::array<char, CURL_ERROR_SIZE> error_buffer{};

  Transfer() = default;
  Transfer(const Transfer&) = delete;
  Transfer& operator=(const Transfer&) = delete;
  // The easy handle must have been removed from the multi handle already.
  ~Transfer() {
    release();
    wipe(response.body);
  }

  // Frees the easy handle (first: it points at the header list and the body), then wipes every
  // copy of the request we hold (url, headers, body, the curl_slist).
  void release() {
    if (easy != nullptr) curl_easy_cleanup(easy);
    easy = nullptr;
    wipe(request.url);
    wipe(request.body);
    for (auto& [name, value] : request.headers) {
      wipe(name);
      wipe(value);
    }
    request.headers.clear();
    for (curl_slist* item = header_list; item != nullptr; item = item->next) {
      if (item->data != nullptr) OPENSSL_cleanse(item->data, std::strlen(item->data));
    }
    curl_slist_free_all(header_list);
    header_list = nullptr;
  }
};

// A finished request waiting on the executor for its callback. Wipes the body if it never ran.
struct Completion {
  HttpTransport::Callback done;
  HttpResponse response;

  Completion(HttpTransport::Callback d, HttpResponse r)
      : done(std::move(d)), response(std::move(r)) {}
  Completion(const Completion&) = delete;
  Completion& operator=(const Completion&) = delete;
  ~Completion() { wipe(response.body); }
};

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
    s.remove_prefix(1);
  while (!s.empty() &&
         (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n'))
    s.remove_suffix(1);
  return s;
}

// CURLOPT_HEADERFUNCTION: one header line at a time, the status line included.
std::size_t on_header(char* data, std::size_t size, std::size_t count, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const std::size_t total = size * count;
  const std::string_view line = trim(std::string_view(data, total));
  // A new status line starts a new header block (after 100 Continue, for instance).
  if (line.starts_with("HTTP/")) {
    t->response.headers.clear();
    return total;
  }
  const auto colon = line.find(':');
  if (colon == std::string_view::npos) return total;
  std::string name(trim(line.substr(0, colon)));
  if (name.empty()) return total;
  std::transform(name.begin(), name.end(), name.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  t->response.headers.insert_or_assign(std::move(name), std::string(trim(line.substr(colon + 1))));
  return total;
}

// CURLOPT_WRITEFUNCTION: appends to the body; returning less than `total` aborts the transfer
// (CURLE_WRITE_ERROR) once the body would exceed the cap.
std::size_t on_body(char* data, std::size_t size, std::size_t count, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const std::size_t total = size * count;
  std::string& body = t->response.body;
  if (total > t->max_body - body.size()) {
    t->too_large = true;
    return 0;
  }
  // Grow by hand so that no reallocation leaves an unwiped copy of the body behind.
  if (body.size() + total > body.capacity()) {
    std::string bigger;
    bigger.reserve(std::min(t->max_body, std::max(body.size() + total, 2 * body.capacity())));
    bigger.append(body);
    wipe(body);
    body.swap(bigger);
  }
  body.append(data, total);
  return total;
}

TransportError classify(CURLcode code, bool too_large) {
  switch (code) {
    case CURLE_OK:
      return TransportError::kNone;
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
      return TransportError::kConnect;
    case CURLE_OPERATION_TIMEDOUT:
      return TransportError::kTimeout;
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CLIENTCERT:
    case CURLE_USE_SSL_FAILED:
      return TransportError::kTls;
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
      return TransportError::kReset;
    case CURLE_WRITE_ERROR:
      return too_large ? TransportError::kTooLarge : TransportError::kOther;
    default:
      return TransportError::kOther;
  }
}

// One line: curl's description of `code`, then its error buffer. libcurl does not put the URL in
// its messages, but should one ever carry a query string, everything from the '?' is dropped.
std::string describe(CURLcode code, const char* detail) {
  std::string message = curl_easy_strerror(code);
  std::string extra(detail);
  if (const auto q = extra.find('?'); q != std::string::npos) extra.resize(q);
  for (char& c : extra) {
    if (std::iscntrl(static_cast<unsigned char>(c)) != 0) c = ' ';
  }
  const std::string_view trimmed = trim(extra);
  if (!trimmed.empty() && trimmed != message) {
    message += ": ";
    message += trimmed;
  }
  return message;
}

Status init_libcurl_once() {
  static std::once_flag once;
  static CURLcode init_result = CURLE_OK;
  std::call_once(once, [] { init_result = curl_global_init(CURL_GLOBAL_DEFAULT); });
  if (init_result != CURLE_OK) {
    return Error(Errc::kInternal,
                 std::string("curl_global_init failed: ") + curl_easy_strerror(init_result));
  }
  const curl_version_info_data* info = curl_version_info(CURLVERSION_NOW);
  if (info->version_num < 0x075500) {  // CURLOPT_PROTOCOLS_STR
    return Error(Errc::kInternal,
                 std::string("libcurl 7.85.0 or newer is required, found ") + info->version);
  }
  if ((info->features & CURL_VERSION_SSL) == 0) {
    return Error(Errc::kInternal, "libcurl was built without TLS support");
  }
  return Ok();
}

}  // namespace

struct CurlTransport::Impl : std::enable_shared_from_this<CurlTransport::Impl> {
  // A socket curl asked us to watch. `id` tells a new socket from an earlier one with the same fd.
  struct Socket {
    Socket(const asio::any_io_executor& executor, std::uint64_t socket_id)
        : descriptor(executor), id(socket_id) {}
    asio::posix::stream_descriptor descriptor;
    std::uint64_t id;
    int wanted = 0;        // CURL_POLL_IN, CURL_POLL_OUT or CURL_POLL_INOUT
    bool reading = false;  // a wait_read is outstanding
    bool writing = false;  // a wait_write is outstanding
  };

  Impl(asio::any_io_executor ex, const HttpConfig& cfg)
      : executor(std::move(ex)), config(cfg), timer(executor) {}
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
  ~Impl() { close(); }

  asio::any_io_executor executor;
  HttpConfig config;
  CURLM* multi = nullptr;
  asio::steady_timer timer;
  std::unordered_map<curl_socket_t, std::unique_ptr<Socket>> sockets;
  std::uint64_t next_socket_id = 1;
  std::deque<std::unique_ptr<Transfer>> waiting;  // FIFO, not yet added to the multi handle
  std::unordered_map<Transfer*, std::unique_ptr<Transfer>> running;  // added to the multi handle
  bool shut_down = false;

  // --- requests ---------------------------------------------------------------------------------

  void send(HttpRequest request, Callback done) {
    if (!done) die("HttpTransport::send() needs a callback");
    auto t = std::make_unique<Transfer>();
    t->request = std::move(request);
    t->done = std::move(done);
    t->max_body = config.max_response_bytes;
    if (shut_down) {
      fail(std::move(t), TransportError::kCancelled, "the transport has shut down");
      return;
    }
    waiting.push_back(std::move(t));
    start_waiting();
  }

  void shutdown() {
    shut_down = true;
    // Running requests first, then the queue in FIFO order.
    std::deque<std::unique_ptr<Transfer>> cancelled;
    for (auto& [raw, t] : running) {
      curl_multi_remove_handle(multi, t->easy);
      cancelled.push_back(std::move(t));
    }
    running.clear();
    for (auto& t : waiting) {
      cancelled.push_back(std::move(t));
    }
    waiting.clear();
    for (auto& t : cancelled) {
      fail(std::move(t), TransportError::kCancelled, "the transport has shut down");
    }
  }

  // Curl first, then the Asio objects: curl_multi_cleanup may still call the socket callback.
  void close() {
    if (multi == nullptr) return;
    for (auto& [raw, t] : running) {
      curl_multi_remove_handle(multi, t->easy);
    }
    running.clear();  // callbacks dropped, copies wiped (~Transfer)
    waiting.clear();
    curl_multi_cleanup(multi);
    multi = nullptr;
    for (auto& [fd, socket] : sockets) {
      socket->descriptor.release();
    }
    sockets.clear();
    timer.cancel();
  }

  void start_waiting() {
    while (!shut_down && !waiting.empty() &&
           running.size() < static_cast<std::size_t>(config.max_in_flight)) {
      std::unique_ptr<Transfer> t = std::move(waiting.front());
      waiting.pop_front();
      start(std::move(t));
    }
  }

  void start(std::unique_ptr<Transfer> t) {
    const HttpRequest& req = t->request;
    if (req.method != "GET" && req.method != "POST" && req.method != "HEAD") {
      std::string message = "unsupported method " + req.method;
      fail(std::move(t), TransportError::kOther, std::move(message));
      return;
    }
    t->easy = curl_easy_init();
    if (t->easy == nullptr) {
      fail(std::move(t), TransportError::kOther, "curl_easy_init failed");
      return;
    }
    for (const auto& [name, value] : req.headers) {
      // "Name;" is curl's way to send a header with an empty value ("Name:" would remove it).
      // Built in place: a temporary from operator+ would leave an unwiped copy of the value.
      std::string line;
      line.reserve(name.size() + value.size() + 3);
      line.append(name).append(value.empty() ? ";" : ": ").append(value);
      curl_slist* appended = curl_slist_append(t->header_list, line.c_str());
      wipe(line);
      if (appended == nullptr) {
        fail(std::move(t), TransportError::kOther, "out of memory building request headers");
        return;
      }
      t->header_list = appended;
    }
    if (const CURLcode rc = configure(*t); rc != CURLE_OK) {
      fail(std::move(t), TransportError::kOther,
           std::string("cannot configure the request: ") + curl_easy_strerror(rc));
      return;
    }
    Transfer* raw = t.get();
    running.emplace(raw, std::move(t));
    if (const CURLMcode mc = curl_multi_add_handle(multi, raw->easy); mc != CURLM_OK) {
      auto node = running.extract(raw);
      fail(std::move(node.mapped()), TransportError::kOther,
           std::string("cannot start the request: ") + curl_multi_strerror(mc));
    }
  }

  CURLcode configure(Transfer& t) const {
    CURL* e = t.easy;
    const HttpRequest& req = t.request;
    CURLcode rc = CURLE_OK;
    auto set = [&](CURLoption option, auto value) {
      if (rc == CURLE_OK) rc = curl_easy_setopt(e, option, value);
    };
    set(CURLOPT_PRIVATE, static_cast<void*>(&t));
    set(CURLOPT_URL, req.url.c_str());
    if (req.method == "POST") {
      set(CURLOPT_POST, 1L);
      set(CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(req.body.size()));
      set(CURLOPT_POSTFIELDS, req.body.c_str());  // not copied: t.request.body outlives the handle
    } else if (req.method == "HEAD") {
      set(CURLOPT_NOBODY, 1L);
    } else {
      set(CURLOPT_HTTPGET, 1L);
    }
    if (t.header_list != nullptr) set(CURLOPT_HTTPHEADER, t.header_list);
    if (req.once) {
      // Never resent: only a request on a reused connection is retried by libcurl.
      set(CURLOPT_FRESH_CONNECT, 1L);
      set(CURLOPT_FORBID_REUSE, 1L);
    }
    set(CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(config.connect_timeout.count()));
    set(CURLOPT_TIMEOUT_MS, static_cast<long>(config.total_timeout.count()));
    set(CURLOPT_SSL_VERIFYPEER, 1L);
    set(CURLOPT_SSL_VERIFYHOST, 2L);
    if (!config.ca_file.empty()) set(CURLOPT_CAINFO, config.ca_file.c_str());
    set(CURLOPT_USERAGENT, config.user_agent.c_str());
    set(CURLOPT_NOSIGNAL, 1L);
    set(CURLOPT_FOLLOWLOCATION, 0L);
    set(CURLOPT_ACCEPT_ENCODING, "");
    set(CURLOPT_PROTOCOLS_STR, "http,https");
    set(CURLOPT_WRITEFUNCTION, &on_body);
    set(CURLOPT_WRITEDATA, static_cast<void*>(&t));
    set(CURLOPT_HEADERFUNCTION, &on_header);
    set(CURLOPT_HEADERDATA, static_cast<void*>(&t));
    set(CURLOPT_ERRORBUFFER, t.error_buffer.data());
    return rc;
  }

  // Drains curl's finished transfers, then fills the freed slots from the queue.
  void collect_finished() {
    int left = 0;
    while (CURLMsg* msg = curl_multi_info_read(multi, &left)) {
      if (msg->msg != CURLMSG_DONE) continue;
      // Copy what we need: msg does not survive curl_multi_remove_handle.
      CURL* easy = msg->easy_handle;
      const CURLcode code = msg->data.result;
      finish(easy, code);
    }
    start_waiting();
  }

  void finish(CURL* easy, CURLcode code) {
    void* priv = nullptr;
    curl_easy_getinfo(easy, CURLINFO_PRIVATE, &priv);
    auto node = running.extract(static_cast<Transfer*>(priv));
    if (node.empty()) die("curl finished a transfer the transport does not know");
    std::unique_ptr<Transfer> t = std::move(node.mapped());
    curl_multi_remove_handle(multi, easy);

    HttpResponse& r = t->response;
    curl_off_t total_us = 0;
    if (curl_easy_getinfo(easy, CURLINFO_TOTAL_TIME_T, &total_us) == CURLE_OK) {
      r.elapsed = std::chrono::duration_cast<std::chrono::milliseconds>(
          std::chrono::microseconds(total_us));
    }
    r.error = classify(code, t->too_large);
    if (r.error == TransportError::kNone) {
      long status = 0;
      curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
      r.status = static_cast<int>(status);
    } else {
      r.status = 0;
      r.headers.clear();
      wipe(r.body);
      r.error_message = r.error == TransportError::kTooLarge
                            ? "response body exceeds max_response_bytes (" +
                                  std::to_string(config.max_response_bytes) + ")"
                            : describe(code, t->error_buffer.data());
    }
    complete(std::move(t));
  }

  void fail(std::unique_ptr<Transfer> t, TransportError error, std::string message) {
    t->response = HttpResponse{};
    t->response.error = error;
    t->response.error_message = std::move(message);
    complete(std::move(t));
  }

  // Frees the easy handle, wipes the request and posts the callback.
  void complete(std::unique_ptr<Transfer> t) {
    t->release();
    auto completion = std::make_unique<Completion>(std::move(t->done), std::move(t->response));
    asio::post(executor, [weak = weak_from_this(), c = std::move(completion)]() {
      if (weak.expired()) return;  // the transport was destroyed: drop the callback
      c->done(std::move(c->response));
    });
  }

  // --- the curl/Asio bridge ---------------------------------------------------------------------

  // CURLMOPT_SOCKETFUNCTION. Must not call back into curl.
  static int on_socket(CURL* /*easy*/, curl_socket_t fd, int what, void* userp, void* /*socketp*/) {
    static_cast<Impl*>(userp)->socket_changed(fd, what);
    return 0;
  }

  // CURLMOPT_TIMERFUNCTION. Must not call back into curl.
  static int on_timer(CURLM* /*multi*/, long timeout_ms, void* userp) {
    static_cast<Impl*>(userp)->timer_changed(timeout_ms);
    return 0;
  }

  void socket_changed(curl_socket_t fd, int what) {
    if (what == CURL_POLL_REMOVE) {
      if (auto it = sockets.find(fd); it != sockets.end()) {
        it->second->descriptor.release();  // cancels our waits; curl closes the fd
        sockets.erase(it);
      }
      return;
    }
    std::unique_ptr<Socket>& slot = sockets[fd];
    if (!slot) {
      slot = std::make_unique<Socket>(executor, next_socket_id++);
      boost::system::error_code ec;
      // If the reactor cannot watch the fd (out of epoll watches), no wait is ever armed and the
      // transfer ends at its timeout.
      slot->descriptor.assign(fd, ec);
      if (ec) return;
    }
    slot->wanted = what;
    arm(*slot, fd);
  }

  void arm(Socket& s, curl_socket_t fd) {
    if (!s.descriptor.is_open()) return;
    if ((s.wanted & CURL_POLL_IN) != 0 && !s.reading) {
      s.reading = true;
      s.descriptor.async_wait(
          asio::posix::stream_descriptor::wait_read,
          [weak = weak_from_this(), fd, id = s.id](boost::system::error_code ec) {
            if (auto self = weak.lock()) self->ready(fd, id, CURL_POLL_IN, ec);
          });
    }
    if ((s.wanted & CURL_POLL_OUT) != 0 && !s.writing) {
      s.writing = true;
      s.descriptor.async_wait(
          asio::posix::stream_descriptor::wait_write,
          [weak = weak_from_this(), fd, id = s.id](boost::system::error_code ec) {
            if (auto self = weak.lock()) self->ready(fd, id, CURL_POLL_OUT, ec);
          });
    }
  }

  // A wait on `fd` finished. `direction` is CURL_POLL_IN or CURL_POLL_OUT.
  void ready(curl_socket_t fd, std::uint64_t id, int direction, boost::system::error_code ec) {
    auto it = sockets.find(fd);
    if (it == sockets.end() || it->second->id != id) return;  // released, or a new socket
    Socket& s = *it->second;
    (direction == CURL_POLL_IN ? s.reading : s.writing) = false;
    if (ec == asio::error::operation_aborted) return;
    if ((s.wanted & direction) == 0) return;  // curl has lost interest meanwhile
    int flags = direction == CURL_POLL_IN ? CURL_CSELECT_IN : CURL_CSELECT_OUT;
    if (ec) flags = CURL_CSELECT_ERR;
    socket_action(fd, flags);
    // The socket may have been removed, or replaced by a new one with the same fd, inside
    // socket_action: look it up again before re-arming.
    it = sockets.find(fd);
    if (it != sockets.end() && it->second->id == id) arm(*it->second, fd);
  }

  void timer_changed(long timeout_ms) {
    timer.cancel();
    if (timeout_ms < 0) return;
    auto on_expiry = [weak = weak_from_this()] {
      if (auto self = weak.lock()) self->socket_action(CURL_SOCKET_TIMEOUT, 0);
    };
    if (timeout_ms == 0) {
      asio::post(executor, on_expiry);
      return;
    }
    timer.expires_after(std::chrono::milliseconds(timeout_ms));
    timer.async_wait([on_expiry](boost::system::error_code ec) {
      if (ec != asio::error::operation_aborted) on_expiry();
    });
  }

  void socket_action(curl_socket_t fd, int flags) {
    if (multi == nullptr) return;
    int still_running = 0;
    curl_multi_socket_action(multi, fd, flags, &still_running);
    collect_finished();
  }
};

Result<std::unique_ptr<CurlTransport>> CurlTransport::create(asio::any_io_executor executor,
                                                             const HttpConfig& config) {
  if (config.max_in_flight < 1) {
    return Error(Errc::kConfig, "http.max_in_flight must be at least 1");
  }
  if (Status s = init_libcurl_once(); !s) return s.error();

  auto impl = std::make_shared<Impl>(std::move(executor), config);
  impl->multi = curl_multi_init();
  if (impl->multi == nullptr) return Error(Errc::kInternal, "curl_multi_init failed");
  CURLM* m = impl->multi;
  CURLMcode mc = CURLM_OK;
  auto set = [&](CURLMoption option, auto value) {
    if (mc == CURLM_OK) mc = curl_multi_setopt(m, option, value);
  };
  set(CURLMOPT_SOCKETFUNCTION, &Impl::on_socket);
  set(CURLMOPT_SOCKETDATA, static_cast<void*>(impl.get()));
  set(CURLMOPT_TIMERFUNCTION, &Impl::on_timer);
  set(CURLMOPT_TIMERDATA, static_cast<void*>(impl.get()));
  // Keep as many idle connections as requests may run at once, for keep-alive reuse.
  set(CURLMOPT_MAXCONNECTS, static_cast<long>(config.max_in_flight));
  if (mc != CURLM_OK) {
    return Error(Errc::kInternal,
                 std::string("cannot configure the curl multi handle: ") + curl_multi_strerror(mc));
  }
  return std::unique_ptr<CurlTransport>(new CurlTransport(std::move(impl)));
}

CurlTransport::CurlTransport(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

CurlTransport::~CurlTransport() {
  impl_->close();
}

void CurlTransport::send(HttpRequest request, Callback done) {
  impl_->send(std::move(request), std::move(done));
}

std::size_t CurlTransport::pending() const {
  return impl_->waiting.size() + impl_->running.size();
}

void CurlTransport::shutdown() {
  impl_->shutdown();
}

}  // namespace tw
