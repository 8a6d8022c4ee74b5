// Sim: the provider simulator served over HTTP(S) on 127.0.0.1 (port 0) from its own io_context
// thread, its admin API called in-process, for integration tests of the real clients.
#pragma once

#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <utility>  // before Boost.Asio: Boost 1.74 + g++ 12 + C++20

#include <boost/asio/io_context.hpp>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "core/result.h"
#include "scheduler/clock.h"
#include "tools/provider-sim/http_server.h"
#include "tools/provider-sim/simulator.h"

namespace tw::testing {

using nlohmann::json;

class Sim {
 public:
  explicit Sim(bool tls, const std::string& dir) : sim_(sim::SimOptions{}, clock_) {
    std::optional<sim::TlsFiles> files;
    if (tls) {
      auto written = sim::write_self_signed_certificate(dir);
      if (!written) die(written.error().message());
      files = *written;
      ca_file_ = files->cert_file;
    }
    auto server = sim::HttpServer::start(io_, "127.0.0.1", 0, files,
                                         [this](const sim::Request& r) { return sim_.handle(r); });
    if (!server) die(server.error().message());
    server_ = std::move(*server);
    base_ = std::string(tls ? "https" : "http") + "://127.0.0.1:" + std::to_string(server_->port());
    thread_ = std::thread([this] { io_.run(); });
  }
  ~Sim() {
    server_->stop();
    io_.stop();
    thread_.join();
  }

  json admin(const std::string& method, const std::string& path, const json& body = {}) {
    sim::Request r;
    r.method = method;
    r.target = path;
    r.path = path.substr(0, path.find('?'));
    if (auto q = path.find('?'); q != std::string::npos) {
      std::stringstream pairs(path.substr(q + 1));
      for (std::string kv; std::getline(pairs, kv, '&');) {
        r.query[kv.substr(0, kv.find('='))] = kv.substr(kv.find('=') + 1);
      }
    }
    r.body = body.is_null() ? "" : body.dump();
    r.remote = "127.0.0.1";
    sim::Response resp = sim_.handle(r);
    EXPECT_EQ(resp.status, 200) << path << ": " << resp.body;
    return json::parse(resp.body, nullptr, false);
  }
  json account(const std::string& provider, const std::string& id) {
    return admin("GET", "/admin/account?provider=" + provider + "&account_id=" + id);
  }
  void fault(json f) { admin("POST", "/admin/fault", f); }
  // A provider call made in-process, e.g. introspecting a token the daemon no longer holds.
  sim::Response call(sim::Request r) {
    r.remote = "127.0.0.1";
    return sim_.handle(r);
  }
  json totals() { return admin("GET", "/admin/counters")["totals"]; }

  const std::string& base() const { return base_; }
  const std::string& ca_file() const { return ca_file_; }

 private:
  SystemClock clock_;
  sim::Simulator sim_;
  boost::asio::io_context io_;
  std::unique_ptr<sim::HttpServer> server_;
  std::thread thread_;
  std::string base_;
  std::string ca_file_;
};

}  // namespace tw::testing
