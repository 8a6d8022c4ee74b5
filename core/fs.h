// Small POSIX file helpers shared by the modules that touch files directly.
//
// Thread-safety: a UniqueFd is owned by one thread; the functions are reentrant.
#pragma once

#include <span>
#include <string>
#include <string_view>
#include <utility>

#include <sys/types.h>

#include "core/result.h"

namespace tw {

// Owns a file descriptor and closes it at scope exit.
class UniqueFd {
 public:
  explicit UniqueFd(int fd = -1) : fd_(fd) {}
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept;
  ~UniqueFd();

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  // Closes now and returns close()'s result (0, or -1 with errno set).
  int close();

 private:
  int fd_;
};

// strerror(err), thread-safely.
std::string errno_text(int err);

// Lower-case hex of `bytes`.
std::string to_hex(std::span<const unsigned char> bytes);

// Ok when `mode` grants group and others nothing; otherwise Errc::kPermission naming `what`, the
// path and the mode, with the chmod that fixes it.
Status require_private_mode(std::string_view what, const std::string& path, mode_t mode);

}  // namespace tw
