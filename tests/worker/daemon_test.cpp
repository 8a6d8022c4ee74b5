// Daemon: what a reload (SIGHUP) applies and what it names as needing a restart.
#include "worker/daemon.h"

#include <gtest/gtest.h>

namespace tw {
namespace {

using namespace std::chrono_literals;

TEST(KeysNeedingRestart, NoneForWhatAReloadApplies) {
  const Config running;
  Config fresh = running;
  EXPECT_TRUE(keys_needing_restart(running, fresh).empty());
  fresh.providers.meta.schedule.check_every = 5min;
  fresh.providers.google.schedule.refresh_every = std::chrono::days(10);
  fresh.providers.tiktok.limits.burst = 1;
  fresh.retry.jitter = 0.5;
  fresh.status.write_every = 2min;
  fresh.status.prometheus_file = "/tmp/tw.prom";
  fresh.log.level = "debug";
  fresh.log.summary_every = 1min;
  EXPECT_TRUE(keys_needing_restart(running, fresh).empty());
}

TEST(KeysNeedingRestart, NamesEverySectionBuiltIntoTheRunningObjects) {
  const Config running;
  Config fresh = running;
  fresh.providers.meta.instagram_base_url = "https://ig.example";
  fresh.http.user_agent = "x";
  fresh.log.format = "json";
  fresh.notify.max_attempts = 3;
  EXPECT_EQ(keys_needing_restart(running, fresh),
            (std::vector<std::string>{"http", "providers.meta", "log.format", "notify"}));
  fresh = running;
  fresh.storage.backend = StorageConfig::Backend::kPostgres;
  fresh.database.busy_timeout = 1s;
  fresh.key.previous_files = {"/etc/tokenwarden/old.key"};
  fresh.scheduler.batch_size = 1;
  fresh.providers.google.client_secret = {SecretRef::Source::kEnv, "G"};
  fresh.providers.tiktok.enabled = true;
  EXPECT_EQ(keys_needing_restart(running, fresh),
            (std::vector<std::string>{"storage", "database", "key", "scheduler", "providers.google",
                                      "providers.tiktok"}));
}

}  // namespace
}  // namespace tw
