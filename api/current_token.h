// The read path for applications: a token's current access token, for `tokenwarden token get` and
// the local API (api/local_api.h). One rule for both: only a token that works is handed out.
//
// Thread-safety: as the store it is given.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "core/result.h"
#include "core/secret.h"
#include "core/time.h"
#include "core/token.h"
#include "storage/token_store.h"

namespace tw {

struct CurrentToken {
  TokenRecord record;
  Secret access_token;
};

// Why a token is not handed out, for a caller that must tell "no such token" from "not now".
enum class Unusable {
  kNone,
  kNotFound,  // no such token
  kDead,      // needs_reauth, revoked or disabled: the customer or an operator must act
  kNoToken,   // no access token stored yet (a client-credentials token before its first renewal)
  kExpired,   // its access token has expired (a renewal is due or failing)
};

struct CurrentTokenResult {
  std::optional<CurrentToken> token;  // set when usable
  Unusable why = Unusable::kNone;
  std::string message;  // one line, no secret: why not
};

// The access token of `id` if it can be used at `now`; a storage failure is an Error.
Result<CurrentTokenResult> current_token(TokenStore& store, std::string_view id, SysTime now);

}  // namespace tw
