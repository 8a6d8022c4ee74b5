// FakeNotifySocket: a stand-in for systemd's notify socket in tests.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "core/result.h"

namespace tw::testing {

// A stand-in for systemd's notify socket: a datagram socket whose path goes in $NOTIFY_SOCKET.
// Like PID 1 it keeps reading: a Unix datagram queue holds few messages (net.unix.max_dgram_qlen,
// often 10) and sd_notify blocks once it is full, so a test that stopped reading would hang the
// daemon it watches.
class FakeNotifySocket {
 public:
  // Binds `path` and, unless `export_env` is false, points $NOTIFY_SOCKET at it.
  explicit FakeNotifySocket(const std::string& path, bool export_env = true) {
    fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    path.copy(addr.sun_path, sizeof addr.sun_path - 1);
    if (bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) die("bind failed");
    if (export_env) setenv("NOTIFY_SOCKET", path.c_str(), 1);
    reader_ = std::thread([this] { read_until_closed(); });
  }
  ~FakeNotifySocket() {
    stop_ = true;
    reader_.join();
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
    close(fd_);
  }
  FakeNotifySocket(const FakeNotifySocket&) = delete;
  FakeNotifySocket& operator=(const FakeNotifySocket&) = delete;

  // Waits up to `deadline` for a message containing `text` among all received so far.
  bool wait_for(const std::string& text, std::chrono::milliseconds deadline) {
    std::unique_lock lock(mu_);
    return arrived_.wait_for(lock, deadline, [&] {
      for (const auto& m : seen_) {
        if (m.find(text) != std::string::npos) return true;
      }
      return false;
    });
  }

  // The messages received since the last call, including any still queued on the socket.
  std::vector<std::string> drain() {
    std::lock_guard lock(mu_);
    receive_pending();
    std::vector<std::string> out(seen_.begin() + static_cast<std::ptrdiff_t>(drained_),
                                 seen_.end());
    drained_ = seen_.size();
    return out;
  }

 private:
  // Reads what is queued; called with mu_ held, so a message is never between socket and list.
  void receive_pending() {
    char buf[4096];
    for (ssize_t n; (n = recv(fd_, buf, sizeof buf, 0)) > 0;) {
      seen_.emplace_back(buf, static_cast<size_t>(n));
    }
    arrived_.notify_all();
  }
  void read_until_closed() {
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 20) <= 0) continue;
      std::lock_guard lock(mu_);
      receive_pending();
    }
  }

  int fd_ = -1;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::condition_variable arrived_;
  std::vector<std::string> seen_;
  size_t drained_ = 0;
  std::thread reader_;
};

}  // namespace tw::testing
