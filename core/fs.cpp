#include "core/fs.h"

#include <cstdio>
#include <system_error>

#include <unistd.h>

namespace tw {

UniqueFd& UniqueFd::operator=(UniqueFd&& other) noexcept {
  if (this != &other) {
    close();
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

UniqueFd::~UniqueFd() {
  close();
}

int UniqueFd::close() {
  if (fd_ < 0) return 0;
  return ::close(std::exchange(fd_, -1));
}

std::string errno_text(int err) {
  return std::generic_category().message(err);
}

std::string to_hex(std::span<const unsigned char> bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) {
    out += kDigits[b >> 4];
    out += kDigits[b & 0x0f];
  }
  return out;
}

Status require_private_mode(std::string_view what, const std::string& path, mode_t mode) {
  if ((mode & 077) == 0) return Ok();
  char octal[8];
  (void)std::snprintf(octal, sizeof octal, "%04o", static_cast<unsigned>(mode & 07777));
  return Error(Errc::kPermission, std::string(what) + " " + path + " has mode " + octal +
                                      ": it must not be readable or writable by group or others "
                                      "(chmod 600 " +
                                      path + ")");
}

}  // namespace tw
