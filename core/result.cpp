#include "core/result.h"

namespace tw {

std::string_view to_string(Errc code) {
  switch (code) {
    case Errc::kInvalidArgument:
      return "invalid argument";
    case Errc::kNotFound:
      return "not found";
    case Errc::kAlreadyExists:
      return "already exists";
    case Errc::kPermission:
      return "permission";
    case Errc::kIo:
      return "i/o";
    case Errc::kBusy:
      return "busy";
    case Errc::kStorage:
      return "storage";
    case Errc::kCorrupt:
      return "corrupt";
    case Errc::kLeaseLost:
      return "lease lost";
    case Errc::kConfig:
      return "config";
    case Errc::kInternal:
      return "internal";
  }
  return "unknown";
}

}  // namespace tw
