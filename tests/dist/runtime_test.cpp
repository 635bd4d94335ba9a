// Launcher detection from the environment, and the single-process runtime (no MPI touched).
#include "lorarecycle/dist/runtime.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

#include "lorarecycle/dist/communicator.h"
#include "lorarecycle/util/env.h"
#include "lorarecycle/util/error.h"

namespace lorarec::dist {
namespace {

// Sets variables for one test and restores the previous environment.
class ScopedEnv {
 public:
  void set(const char* name, const char* value) {
    const char* old = std::getenv(name);
    saved_.emplace_back(name, old ? std::optional<std::string>(old) : std::nullopt);
    ::setenv(name, value, 1);
  }
  void unset(const char* name) {
    const char* old = std::getenv(name);
    saved_.emplace_back(name, old ? std::optional<std::string>(old) : std::nullopt);
    ::unsetenv(name);
  }
  ~ScopedEnv() {
    for (auto it = saved_.rbegin(); it != saved_.rend(); ++it)
      it->second ? ::setenv(it->first.c_str(), it->second->c_str(), 1) : ::unsetenv(it->first.c_str());
  }

 private:
  std::vector<std::pair<std::string, std::optional<std::string>>> saved_;
};

void clear_launchers(ScopedEnv& e) {
  for (const char* v :
       {env::kOmpiWorldSize, env::kPmixRank, env::kPmiRank, env::kPmiSize, env::kSlurmJobId, env::kSlurmStepId})
    e.unset(v);
}

TEST(Launcher, DetectedFromTheEnvironment) {
  ScopedEnv e;
  clear_launchers(e);
  EXPECT_EQ(detect_launcher(), Launcher::kNone);
  e.set(env::kPmixRank, "0");
  EXPECT_EQ(detect_launcher(), Launcher::kPmix);
  e.set(env::kSlurmStepId, "0");
  EXPECT_EQ(detect_launcher(), Launcher::kSrun);
  e.set(env::kOmpiWorldSize, "2");
  EXPECT_EQ(detect_launcher(), Launcher::kMpirun);
}

TEST(Runtime, AloneIsWorldSizeOneWithoutMpi) {
  ScopedEnv e;
  clear_launchers(e);
  int argc = 1;
  char name[] = "test";
  char* args[] = {name, nullptr};
  char** argv = args;
  Runtime rt(&argc, &argv);
  EXPECT_FALSE(rt.mpi_active());
  EXPECT_EQ(rt.world_size(), 1);
  EXPECT_EQ(rt.rank(), 0);
  EXPECT_NE(rt.describe().find("none (single process)"), std::string::npos);
  EXPECT_STREQ(rt.make_communicator("auto")->name(), "local");
  EXPECT_THROW(rt.make_communicator("mpi"), InputError);
  EXPECT_THROW(rt.make_communicator("carrier-pigeon"), InputError);
  // Without NCCL support, or (with it) without an MPI launcher to share the unique id.
  EXPECT_THROW(rt.make_communicator("nccl"), InputError);
}

}  // namespace
}  // namespace lorarec::dist
