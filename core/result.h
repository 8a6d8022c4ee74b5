// Result<T> and Status: expected failures as values.
//
// Thread-safety: plain values; no shared state.
// Expected failures (network, provider errors, decryption, a locked database, bad input) travel as
// an Error inside a Result. Exceptions stop at the boundary of the library that throws them
// (yaml-cpp, SQLiteCpp). Calling value() on an error is a broken invariant and aborts loudly.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace tw {

// What went wrong, coarse enough for a caller to decide what to do next.
enum class Errc {
  kInvalidArgument,  // the caller's input is wrong; nothing was changed
  kNotFound,         // no such token, file or key
  kAlreadyExists,    // refusing to overwrite
  kPermission,       // a file mode or ownership is unsafe or access was denied
  kIo,               // reading or writing a file failed
  kBusy,             // the database stayed locked past the busy timeout: retry later
  kStorage,          // any other database failure
  kCorrupt,          // a stored value failed to decrypt or decode
  kLeaseLost,        // another worker holds the token's lease
  kConfig,           // the configuration is invalid
  kInternal,         // a library call failed in a way we did not expect
};

std::string_view to_string(Errc code);

class Error {
 public:
  Error(Errc code, std::string message) : code_(code), message_(std::move(message)) {}
  Errc code() const { return code_; }
  // One line, safe to log: never contains a secret.
  const std::string& message() const { return message_; }

 private:
  Errc code_;
  std::string message_;
};

// Aborts with a message: for broken invariants only, never for expected failures.
[[noreturn]] inline void die(std::string_view what) {
  std::fprintf(stderr, "tokenwarden: fatal: %.*s\n", static_cast<int>(what.size()), what.data());
  std::abort();
}

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value)
      : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT(google-explicit-constructor)
  Result(Error error)
      : v_(std::in_place_index<1>, std::move(error)) {}  // NOLINT(google-explicit-constructor)

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }

  T& value() & {
    if (!ok()) fail();
    return std::get<0>(v_);
  }
  const T& value() const& {
    if (!ok()) fail();
    return std::get<0>(v_);
  }
  T&& value() && {
    if (!ok()) fail();
    return std::get<0>(std::move(v_));
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }

  const Error& error() const {
    if (ok()) die("Result::error() called on a value");
    return std::get<1>(v_);
  }

 private:
  [[noreturn]] void fail() const {
    die("Result::value() called on an error: " + std::get<1>(v_).message());
  }
  std::variant<T, Error> v_;
};

// Success or an Error, with no value.
template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : error_(std::move(error)) {}  // NOLINT(google-explicit-constructor)

  bool ok() const { return !error_.has_value(); }
  explicit operator bool() const { return ok(); }
  const Error& error() const {
    if (ok()) die("Status::error() called on success");
    return *error_;
  }

 private:
  std::optional<Error> error_;
};

using Status = Result<void>;

inline Status Ok() {
  return {};
}

}  // namespace tw
