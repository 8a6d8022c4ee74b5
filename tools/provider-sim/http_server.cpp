// The provider simulator's HTTP server: an accept loop on a strand, and one Session per connection
// on a strand of its own. Sessions keep the Server state alive; it knows its sessions only by
// weak_ptr, so that stop() can close them.
#include "tools/provider-sim/http_server.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <cstdio>
#include <mutex>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <fcntl.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include "http/transport.h"

namespace tw::sim {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

namespace {

constexpr std::chrono::seconds kIdleTimeout{30};
constexpr std::uint64_t kBodyLimit = 1 << 20;

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

std::string endpoint_text(const tcp::endpoint& e) {
  const std::string address = e.address().to_string();
  return (e.address().is_v6() ? "[" + address + "]" : address) + ":" + std::to_string(e.port());
}

// What the server needs from a session: a way to close it from stop().
class SessionBase {
 public:
  virtual ~SessionBase() = default;
  // Closes the connection on the session's own strand; safe from any thread.
  virtual void abort() = 0;
};

// The listening socket, the handler and the open sessions. Sessions keep it alive.
struct Server : std::enable_shared_from_this<Server> {
  Server(asio::io_context& io_context, Handler h)
      : io(io_context), acceptor(asio::make_strand(io_context)), handler(std::move(h)) {}

  asio::io_context& io;
  tcp::acceptor acceptor;  // used on its strand only
  std::optional<asio::ssl::context> ssl;
  Handler handler;
  std::uint16_t port = 0;
  std::atomic<bool> stopped{false};
  std::atomic<std::uint64_t> connections{0};
  std::atomic<std::uint64_t> requests{0};

  std::mutex mutex;  // guards sessions
  std::unordered_map<std::uint64_t, std::weak_ptr<SessionBase>> sessions;
  std::uint64_t next_session = 0;  // on the acceptor's strand only

  void accept();
  void on_accept(beast::error_code ec, tcp::socket socket);
  void close_all();  // on the acceptor's strand
  void forget(std::uint64_t id) {
    const std::lock_guard lock(mutex);
    sessions.erase(id);
  }
};

// One connection: read a request, ask the handler, deliver the response, repeat.
// Every step runs on the connection's strand (the executor of its socket).
template <class Stream>
class Session final : public SessionBase, public std::enable_shared_from_this<Session<Stream>> {
  static constexpr bool kTls = !std::is_same_v<Stream, beast::tcp_stream>;

 public:
  template <class... TlsContext>
  Session(std::shared_ptr<Server> server, std::uint64_t id, std::string remote,
          tcp::socket&& socket, TlsContext&... tls)
      : server_(std::move(server)),
        id_(id),
        remote_(std::move(remote)),
        stream_(std::move(socket), tls...),
        delay_(stream_.get_executor()) {}
  ~Session() override { server_->forget(id_); }
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  void run() {
    asio::dispatch(stream_.get_executor(), [self = this->shared_from_this()] { self->begin(); });
  }

  void abort() override {
    asio::post(stream_.get_executor(), [self = this->shared_from_this()] { self->close(); });
  }

 private:
  beast::tcp_stream& tcp() { return beast::get_lowest_layer(stream_); }

  void begin() {
    if constexpr (kTls) {
      tcp().expires_after(kIdleTimeout);
      stream_.async_handshake(asio::ssl::stream_base::server,
                              [self = this->shared_from_this()](beast::error_code ec) {
                                if (ec) return self->close();
                                self->read();
                              });
    } else {
      read();
    }
  }

  void read() {
    if (closed_) return;
    parser_.emplace();
    parser_->body_limit(kBodyLimit);
    tcp().expires_after(kIdleTimeout);
    http::async_read(stream_, buffer_, *parser_,
                     [self = this->shared_from_this()](beast::error_code ec, std::size_t) {
                       self->on_read(ec);
                     });
  }

  void on_read(beast::error_code ec) {
    // end_of_stream (the client closed), the idle timeout, an oversized body, or stop().
    if (ec || server_->stopped) return close();
    auto& req = parser_->get();
    Request request;
    request.method = std::string(req.method_string());
    request.target = std::string(req.target());
    const auto q = request.target.find('?');
    request.path = request.target.substr(0, q);
    if (q != std::string::npos) {
      request.query = form_decode(std::string_view(request.target).substr(q + 1));
    }
    for (const auto& field : req) {
      const auto name = field.name_string();
      request.headers.insert_or_assign(lower({name.data(), name.size()}),
                                       std::string(field.value()));
    }
    request.body = std::move(req.body());
    request.remote = remote_;
    keep_alive_ = req.keep_alive();
    version_ = req.version();

    response_ = server_->handler(request);
    server_->requests.fetch_add(1, std::memory_order_relaxed);

    if (response_.delay.count() > 0) {
      tcp().expires_never();
      delay_.expires_after(response_.delay);
      delay_.async_wait([self = this->shared_from_this()](beast::error_code wait_ec) {
        if (wait_ec) return self->close();
        self->deliver();
      });
    } else {
      deliver();
    }
  }

  void deliver() {
    if (closed_) return;
    switch (response_.delivery) {
      case Response::Delivery::kNormal:
        return write();
      case Response::Delivery::kTruncate:
        return truncate();
      case Response::Delivery::kReset:
        return reset();
      case Response::Delivery::kHang:
        return hang();
    }
  }

  void build_message() {
    message_ = {};
    message_.version(version_);
    message_.result(static_cast<unsigned>(response_.status));
    message_.set(http::field::server, "tokenwarden-provider-sim");
    if (!response_.content_type.empty()) {
      message_.set(http::field::content_type, response_.content_type);
    }
    for (const auto& [name, value] : response_.headers) {
      message_.insert(name, value);
    }
    message_.body() = std::move(response_.body);
    message_.keep_alive(keep_alive_);
    message_.prepare_payload();  // Content-Length
  }

  void write() {
    build_message();
    tcp().expires_after(kIdleTimeout);
    http::async_write(stream_, message_,
                      [self = this->shared_from_this()](beast::error_code ec, std::size_t) {
                        if (ec || !self->keep_alive_) return self->close();
                        self->read();
                      });
  }

  // The head promises the whole body; half of it is sent, then the connection is closed.
  void truncate() {
    build_message();
    serializer_.emplace(message_);
    tcp().expires_after(kIdleTimeout);
    http::async_write_header(stream_, *serializer_,
                             [self = this->shared_from_this()](beast::error_code ec, std::size_t) {
                               if (ec) return self->close();
                               const std::string& body = self->message_.body();
                               asio::async_write(
                                   self->stream_, asio::buffer(body.data(), body.size() / 2),
                                   [self](beast::error_code, std::size_t) { self->close(); });
                             });
  }

  // RST instead of FIN: linger on with a zero timeout, then close.
  void reset() {
    closed_ = true;
    beast::error_code ec;
    tcp().socket().set_option(asio::socket_base::linger(true, 0), ec);
    tcp().socket().close(ec);
  }

  // Never answers; reads and discards until the client closes or stop() closes the socket.
  void hang() {
    tcp().expires_never();
    stream_.async_read_some(asio::buffer(scratch_),
                            [self = this->shared_from_this()](beast::error_code ec, std::size_t) {
                              if (ec || self->closed_) return self->close();
                              self->hang();
                            });
  }

  void close() {
    if (closed_) return;
    closed_ = true;
    delay_.cancel();
    beast::error_code ec;
    tcp().socket().shutdown(tcp::socket::shutdown_send, ec);
    tcp().close();
  }

  std::shared_ptr<Server> server_;
  std::uint64_t id_;
  std::string remote_;
  Stream stream_;
  asio::steady_timer delay_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  Response response_;
  http::response<http::string_body> message_;
  std::optional<http::response_serializer<http::string_body>> serializer_;
  std::array<char, 4096> scratch_{};
  unsigned version_ = 11;
  bool keep_alive_ = true;
  bool closed_ = false;
};

void Server::accept() {
  if (stopped) return;
  acceptor.async_accept(asio::make_strand(io),
                        [self = shared_from_this()](beast::error_code ec, tcp::socket socket) {
                          self->on_accept(ec, std::move(socket));
                        });
}

void Server::on_accept(beast::error_code ec, tcp::socket socket) {
  if (stopped || !acceptor.is_open()) return;
  if (ec) return accept();  // e.g. the client gave up before we accepted: keep listening
  beast::error_code peer_ec;
  const tcp::endpoint peer = socket.remote_endpoint(peer_ec);
  std::string remote = peer_ec ? "unknown" : endpoint_text(peer);
  connections.fetch_add(1, std::memory_order_relaxed);

  const std::uint64_t id = next_session++;
  auto launch = [&](auto session) {
    {
      const std::lock_guard lock(mutex);
      sessions.emplace(id, session);
    }
    session->run();
  };
  if (ssl) {
    launch(std::make_shared<Session<beast::ssl_stream<beast::tcp_stream>>>(
        shared_from_this(), id, std::move(remote), std::move(socket), *ssl));
  } else {
    launch(std::make_shared<Session<beast::tcp_stream>>(shared_from_this(), id, std::move(remote),
                                                        std::move(socket)));
  }
  accept();
}

void Server::close_all() {
  beast::error_code ec;
  acceptor.close(ec);
  std::vector<std::weak_ptr<SessionBase>> open;
  {
    const std::lock_guard lock(mutex);
    for (const auto& [id, weak] : sessions) {
      open.push_back(weak);
    }
  }
  // Outside the lock: dropping the last reference to a session runs ~Session, which locks.
  for (const auto& weak : open) {
    if (auto session = weak.lock()) session->abort();
  }
}

}  // namespace

struct HttpServer::Impl : Server {
  using Server::Server;
};

Result<std::unique_ptr<HttpServer>> HttpServer::start(asio::io_context& io,
                                                      const std::string& address,
                                                      std::uint16_t port,
                                                      std::optional<TlsFiles> tls,
                                                      Handler handler) {
  if (!handler) return Error(Errc::kInvalidArgument, "HttpServer::start needs a handler");
  auto impl = std::make_shared<Impl>(io, std::move(handler));
  const std::string where = address + ":" + std::to_string(port);
  beast::error_code ec;
  const auto ip = asio::ip::make_address(address, ec);
  if (ec) return Error(Errc::kInvalidArgument, "not an IP address: " + address);

  if (tls) {
    auto& ctx = impl->ssl.emplace(asio::ssl::context::tls_server);
    ctx.set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                    asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 |
                    asio::ssl::context::no_tlsv1_1);
    ctx.use_certificate_chain_file(tls->cert_file, ec);
    if (ec) {
      return Error(Errc::kIo,
                   "cannot load the TLS certificate " + tls->cert_file + ": " + ec.message());
    }
    ctx.use_private_key_file(tls->key_file, asio::ssl::context::pem, ec);
    if (ec) {
      return Error(Errc::kIo,
                   "cannot load the TLS private key " + tls->key_file + ": " + ec.message());
    }
  }

  const tcp::endpoint endpoint(ip, port);
  auto fail = [&](const char* step) {
    return Error(Errc::kIo, "cannot listen on " + where + " (" + step + "): " + ec.message());
  };
  if (impl->acceptor.open(endpoint.protocol(), ec); ec) return fail("open");
  if (impl->acceptor.set_option(asio::socket_base::reuse_address(true), ec); ec) {
    return fail("SO_REUSEADDR");
  }
  if (impl->acceptor.bind(endpoint, ec); ec) return fail("bind");
  if (impl->acceptor.listen(asio::socket_base::max_listen_connections, ec); ec) {
    return fail("listen");
  }
  impl->port = impl->acceptor.local_endpoint(ec).port();
  if (ec) return fail("local address");

  asio::post(impl->acceptor.get_executor(), [impl] { impl->accept(); });
  std::unique_ptr<HttpServer> server(new HttpServer());
  server->impl_ = std::move(impl);
  return server;
}

HttpServer::HttpServer() = default;

HttpServer::~HttpServer() {
  if (impl_) stop();
}

std::uint16_t HttpServer::port() const {
  return impl_->port;
}

bool HttpServer::tls() const {
  return impl_->ssl.has_value();
}

ServerStats HttpServer::stats() const {
  return {impl_->connections.load(), impl_->requests.load()};
}

void HttpServer::stop() {
  // The flag takes effect at once (no new handler calls); the sockets close on the io_context.
  impl_->stopped = true;
  asio::post(impl_->acceptor.get_executor(), [impl = impl_] { impl->close_all(); });
}

// --- self-signed certificate --------------------------------------------------------------------

namespace {

Error openssl_error(const std::string& what) {
  std::array<char, 256> text{};
  const unsigned long code = ERR_get_error();
  ERR_clear_error();
  if (code == 0) return Error(Errc::kInternal, what + " failed");
  ERR_error_string_n(code, text.data(), text.size());
  return Error(Errc::kInternal, what + " failed: " + text.data());
}

// Writes `write(FILE*)` to `path`, created (or truncated) with `mode`.
template <class WriteFn>
Status write_pem(const std::string& path, mode_t mode, WriteFn write) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
  if (fd < 0) return Error(Errc::kIo, "cannot create " + path);
  if (::fchmod(fd, mode) != 0) {
    ::close(fd);
    return Error(Errc::kIo, "cannot set the mode of " + path);
  }
  FILE* file = ::fdopen(fd, "w");
  if (file == nullptr) {
    ::close(fd);
    return Error(Errc::kIo, "cannot open " + path);
  }
  const bool written = write(file) == 1;
  const bool closed = std::fclose(file) == 0;
  if (!written || !closed) return Error(Errc::kIo, "cannot write " + path);
  return Ok();
}

Status add_extension(X509* cert, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, cert, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
  if (ext == nullptr)
    return openssl_error(std::string("building the extension ") + OBJ_nid2sn(nid));
  const int added = X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
  if (added != 1) return openssl_error(std::string("adding the extension ") + OBJ_nid2sn(nid));
  return Ok();
}

}  // namespace

Result<TlsFiles> write_self_signed_certificate(const std::string& directory) {
  const std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(EVP_EC_gen("P-256"),
                                                                &EVP_PKEY_free);
  if (!key) return openssl_error("generating a P-256 key");
  const std::unique_ptr<X509, decltype(&X509_free)> cert(X509_new(), &X509_free);
  if (!cert) return openssl_error("X509_new");

  // A random positive 127-bit serial number.
  std::array<unsigned char, 16> serial{};
  if (RAND_bytes(serial.data(), static_cast<int>(serial.size())) != 1) {
    return openssl_error("drawing a serial number");
  }
  serial[0] &= 0x7F;
  const std::unique_ptr<BIGNUM, decltype(&BN_free)> serial_bn(
      BN_bin2bn(serial.data(), static_cast<int>(serial.size()), nullptr), &BN_free);
  if (!serial_bn ||
      BN_to_ASN1_INTEGER(serial_bn.get(), X509_get_serialNumber(cert.get())) == nullptr) {
    return openssl_error("setting the serial number");
  }

  constexpr long kOneYear = 365L * 24 * 60 * 60;
  X509_NAME* name = X509_get_subject_name(cert.get());
  const auto* common_name = reinterpret_cast<const unsigned char*>("localhost");
  const auto* organization = reinterpret_cast<const unsigned char*>("tokenwarden provider-sim");
  if (X509_set_version(cert.get(), X509_VERSION_3) != 1 ||
      X509_gmtime_adj(X509_getm_notBefore(cert.get()), 0) == nullptr ||
      X509_gmtime_adj(X509_getm_notAfter(cert.get()), kOneYear) == nullptr ||
      X509_set_pubkey(cert.get(), key.get()) != 1 ||
      X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, organization, -1, -1, 0) != 1 ||
      X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, common_name, -1, -1, 0) != 1 ||
      X509_set_issuer_name(cert.get(), name) != 1) {
    return openssl_error("filling in the certificate");
  }
  // CA:TRUE so that clients can trust the certificate itself as their CA file.
  for (const auto& [nid, value] : {
           std::pair{NID_basic_constraints, "critical,CA:TRUE"},
           std::pair{NID_key_usage, "critical,digitalSignature,keyCertSign"},
           std::pair{NID_ext_key_usage, "serverAuth"},
           std::pair{NID_subject_alt_name, "IP:127.0.0.1,IP:::1,DNS:localhost"},
           std::pair{NID_subject_key_identifier, "hash"},
       }) {
    if (Status s = add_extension(cert.get(), nid, value); !s) return s.error();
  }
  if (X509_sign(cert.get(), key.get(), EVP_sha256()) <= 0) {
    return openssl_error("signing the certificate");
  }

  TlsFiles files{directory + "/cert.pem", directory + "/key.pem"};
  if (Status s = write_pem(files.key_file, 0600,
                           [&](FILE* f) {
                             return PEM_write_PrivateKey(f, key.get(), nullptr, nullptr, 0, nullptr,
                                                         nullptr);
                           });
      !s) {
    return s.error();
  }
  if (Status s =
          write_pem(files.cert_file, 0644, [&](FILE* f) { return PEM_write_X509(f, cert.get()); });
      !s) {
    return s.error();
  }
  return files;
}

}  // namespace tw::sim
