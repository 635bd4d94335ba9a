#include "lorarecycle/model/resnet.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdlib>

#include "lorarecycle/io/safetensors.h"
#include "lorarecycle/util/error.h"
#include "test_util.h"

namespace lorarec::model {
namespace {

// torchvision itself (tests/reference/torchvision_resnet.py) is the reference.
TEST(ResNet, MatchesTorchvisionResNet50AndCifarResNet18) {
  test::TempDir dir;
  const std::string cmd = std::string(LORAREC_PYTHON3) + " " + LORAREC_SOURCE_DIR +
                          "/tests/reference/torchvision_resnet.py " + dir.path().string();
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  for (const char* name : {"r50", "r18"}) {
    const ResNet net = ResNet::load(dir.file(std::string(name) + ".safetensors"));
    EXPECT_EQ(net.config().bottleneck, std::string(name) == "r50");
    EXPECT_EQ(net.config().imagenet_stem, std::string(name) == "r50");
    const auto io = io::load_safetensors(dir.file(std::string(name) + "_io.safetensors"));
    const at::Tensor x = io.at("input");
    std::vector<BnStat> stats;
    at::NoGradGuard ng;
    const at::Tensor logits = net.forward(x, false, &stats);
    EXPECT_LT(test::rel_error(logits, io.at("logits")), 1e-4) << name;
    ASSERT_EQ(static_cast<int>(stats.size()), std::string(name) == "r50" ? 53 : 20);
    for (size_t i = 0; i < stats.size(); ++i) {
      char key[32];
      std::snprintf(key, sizeof key, "bn_mean.%03zu", i);
      EXPECT_LT(test::rel_error(stats[i].mean, io.at(key)), 1e-4) << name << " " << key;
      std::snprintf(key, sizeof key, "bn_var.%03zu", i);
      EXPECT_LT(test::rel_error(stats[i].var, io.at(key)), 1e-4) << name << " " << key;
    }
  }
}

TEST(ResNet, SaveLoadRoundTripAndTrainModeUpdatesRunningStats) {
  test::TempDir dir;
  ResNetConfig cfg;
  cfg.width = 8;
  cfg.num_classes = 3;
  ResNet net = ResNet::random(cfg, 1);
  net.save(dir.file("prior"));
  const ResNet back = ResNet::load(dir.file("prior"));
  const at::Tensor x = at::randn({4, 3, 16, 16});
  EXPECT_TRUE(at::equal(net.forward(x, false), back.forward(x, false)));
  const at::Tensor before = net.buffers()[0].clone();
  net.forward(x, true);
  EXPECT_FALSE(at::equal(before, net.buffers()[0]));
  // 12 BN layers (stem, 4 blocks x 2, 3 downsamples): 38 parameters, 24 running statistics, 12 counters.
  EXPECT_EQ(net.parameters().size(), 38u);
  EXPECT_EQ(net.buffers().size(), 24u);
  EXPECT_EQ(net.state_dict().size(), 74u);
}

TEST(ResNet, RejectsForeignWeights) {
  EXPECT_THROW(ResNet::from_tensors({{"fc.weight", at::zeros({2, 2})}}, "x"), InputError);
  ResNetConfig cfg;
  cfg.width = 4;
  auto sd = ResNet::random(cfg, 1).state_dict();
  sd["layer9.0.conv1.weight"] = at::zeros({1});
  EXPECT_THROW(ResNet::from_tensors(sd, "x"), InputError);
}

}  // namespace
}  // namespace lorarec::model
