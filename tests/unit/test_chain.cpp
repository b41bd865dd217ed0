// The chain contract: on_request in order, the other hooks in reverse, on_complete exactly once
// for every plugin whose on_request ran; snapshots are immutable across publish().
#include <gtest/gtest.h>

#include "plugins/chain.hpp"

namespace {

using glmp::core::pipeline::RequestContext;
using glmp::core::plugins::Chain;
using glmp::core::plugins::ChainHolder;
using glmp::core::plugins::ChainRun;
using glmp::core::plugins::HookResult;
using glmp::core::plugins::Plugin;

class Recorder : public Plugin {
public:
  Recorder(std::string name, std::vector<std::string>& log, HookResult result = HookResult::Continue)
      : name_(std::move(name)), log_(log), result_(result) {}
  const std::string& name() const override { return name_; }
  HookResult on_request(RequestContext&) override {
    log_.push_back(name_ + ".request");
    return result_;
  }
  void on_response_headers(RequestContext&) override { log_.push_back(name_ + ".headers"); }
  void on_response_body(RequestContext&, std::string_view chunk, bool eos) override {
    log_.push_back(name_ + ".body:" + std::string(chunk) + (eos ? ":eos" : ""));
  }
  void on_complete(RequestContext&) override { log_.push_back(name_ + ".complete"); }

private:
  std::string name_;
  std::vector<std::string>& log_;
  HookResult result_;
};

TEST(ChainRun, OrderIsForwardThenReverse) {
  std::vector<std::string> log;
  auto chain = std::make_shared<Chain>();
  chain->plugins = {std::make_shared<Recorder>("a", log), std::make_shared<Recorder>("b", log)};
  RequestContext ctx;
  ChainRun run(chain);
  EXPECT_EQ(run.request(ctx), HookResult::Continue);
  run.response_headers(ctx);
  run.response_body(ctx, "x", true);
  run.complete(ctx);
  run.complete(ctx);  // idempotent
  EXPECT_EQ(log, (std::vector<std::string>{"a.request", "b.request", "b.headers", "a.headers", "b.body:x:eos",
                                           "a.body:x:eos", "b.complete", "a.complete"}));
}

TEST(ChainRun, StopsAtRespondedAndCompletesOnlyThoseThatRan) {
  std::vector<std::string> log;
  auto chain = std::make_shared<Chain>();
  chain->plugins = {std::make_shared<Recorder>("a", log), std::make_shared<Recorder>("b", log, HookResult::Responded),
                    std::make_shared<Recorder>("c", log)};
  RequestContext ctx;
  ChainRun run(chain);
  EXPECT_EQ(run.request(ctx), HookResult::Responded);
  run.complete(ctx);
  EXPECT_EQ(log, (std::vector<std::string>{"a.request", "b.request", "b.complete", "a.complete"}));
}

TEST(ChainHolder, SnapshotSurvivesPublish) {
  std::vector<std::string> log;
  ChainHolder holder;
  EXPECT_TRUE(holder.snapshot()->plugins.empty());
  auto first = std::make_shared<Chain>();
  first->plugins = {std::make_shared<Recorder>("v1", log)};
  first->generation = 1;
  holder.publish(first);
  auto taken = holder.snapshot();
  auto second = std::make_shared<Chain>();
  second->generation = 2;
  holder.publish(second);
  EXPECT_EQ(taken->generation, 1u);
  ASSERT_EQ(taken->plugins.size(), 1u);
  EXPECT_EQ(taken->plugins[0]->name(), "v1");
  EXPECT_EQ(holder.snapshot()->generation, 2u);
}

}  // namespace
