#include "lorarecycle/model/peft.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "lorarecycle/io/safetensors.h"
#include "lorarecycle/util/error.h"
#include "lorarecycle/util/fs.h"
#include "test_util.h"

namespace lorarec::model {
namespace {

Lora random_lora(const ClipVisionConfig& c, double alpha,
                 std::vector<model::Module> mods = {model::Module::kQ, model::Module::kV}) {
  LoraConfig lc;
  lc.r = 3;
  lc.alpha = alpha;
  lc.target_modules = mods;
  Lora l(c, lc, 11);
  for (const auto& [key, ad] : l.adapters())
    l.find(key.first, static_cast<model::Module>(key.second))->b.normal_();  // B != 0
  l.init_head(5, 12);
  return l;
}

void expect_same(const Lora& a, const Lora& b) {
  EXPECT_EQ(a.config().r, b.config().r);
  EXPECT_DOUBLE_EQ(a.scale(), b.scale());
  ASSERT_EQ(a.adapters().size(), b.adapters().size());
  for (const auto& [key, ad] : a.adapters()) {
    const model::Adapter* o = b.find(key.first, static_cast<model::Module>(key.second));
    ASSERT_NE(o, nullptr);
    EXPECT_TRUE(at::equal(ad.a, o->a));
    EXPECT_TRUE(at::equal(ad.b, o->b));
  }
  EXPECT_TRUE(at::equal(a.head_weight(), b.head_weight()));
  EXPECT_TRUE(at::equal(a.head_bias(), b.head_bias()));
}

TEST(Peft, RoundTripWithHeadAndScaling) {
  test::TempDir dir;
  const auto c = test::tiny_config();
  const Lora l = random_lora(c, 6.0, {model::Module::kQ, model::Module::kV, model::Module::kFc1});
  save_peft(dir.file("adapter"), l, "tiny");
  const Lora r = load_peft(dir.file("adapter"), c);
  expect_same(l, r);
  EXPECT_DOUBLE_EQ(r.scale(), 2.0);
  EXPECT_EQ(r.config().target_modules.size(), 3u);
}

TEST(Peft, UnknownConfigKeysIgnoredMissingOnesDefaulted) {
  test::TempDir dir;
  const auto c = test::tiny_config();
  LoraConfig lc;
  lc.r = 8;  // PEFT's default rank, so a config without "r" matches
  lc.alpha = 8;
  Lora l(c, lc, 3);
  save_peft(dir.file("a"), l);
  fs::write_text(dir.path() / "a" / kPeftConfig, R"({"peft_type": "LORA", "brand_new_option": [1, 2]})");
  const Lora r = load_peft(dir.file("a"), c);
  EXPECT_EQ(r.config().r, 8);
  EXPECT_DOUBLE_EQ(r.scale(), 1.0);
  EXPECT_EQ(r.adapters().size(), l.adapters().size());  // target modules inferred from the weights
}

void expect_load_error(const std::string& dir, const ClipVisionConfig& c, const std::string& needle) {
  try {
    load_peft(dir, c);
    FAIL() << "accepted; expected '" << needle << "'";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(dir), std::string::npos) << "message must name the file: " << e.what();
  }
}

TEST(Peft, BadAdaptersRejected) {
  test::TempDir dir;
  const auto c = test::tiny_config();
  const Lora l = random_lora(c, 3.0);
  const std::string d = dir.file("bad");
  save_peft(d, l);
  const auto cfg_path = fs::stdfs::path(d) / kPeftConfig;
  const std::string good = fs::read_text(cfg_path);
  auto with = [&](const std::string& key, const nlohmann::json& value) {
    auto j = nlohmann::json::parse(good);
    j[key] = value;
    fs::write_text(cfg_path, j.dump());
  };
  with("r", 4);
  expect_load_error(d, c, "says r = 4");
  with("target_modules", nlohmann::json::array({"q_proj", "w_proj"}));
  expect_load_error(d, c, "unknown LoRA target module 'w_proj'");
  with("target_modules", nlohmann::json::array({"q_proj"}));
  expect_load_error(d, c, "not in target_modules");
  fs::write_text(cfg_path, "{not json");
  expect_load_error(d, c, "invalid JSON");
  fs::write_text(cfg_path, good);
  // Weights of the wrong shape for this ViT.
  auto other = test::tiny_config();
  other.hidden_size = 48;
  other.num_attention_heads = 4;
  expect_load_error(d, other, "expected");
  // NaN weights.
  auto tensors = io::load_safetensors((fs::stdfs::path(d) / kPeftWeights).string());
  std::map<std::string, at::Tensor> owned;
  for (auto& [k, t] : tensors) owned[k] = t.clone();
  owned.begin()->second.view({-1})[0] = NAN;
  io::save_safetensors((fs::stdfs::path(d) / kPeftWeights).string(), owned);
  expect_load_error(d, c, "NaN");
}

TEST(Official, RoundTripFoldsScaleAndZeroesHeadBias) {
  test::TempDir dir;
  const auto c = test::tiny_config();
  const Lora l = random_lora(c, 6.0);  // scale 2
  save_official(dir.file("lora.safetensors"), l);
  const auto raw = io::load_safetensors(dir.file("lora.safetensors"));
  EXPECT_TRUE(raw.count("w_a_000") && raw.count("w_b_005") && raw.count("fc_12in_5out"));
  const Lora r = load_official(dir.file("lora.safetensors"), c);
  EXPECT_DOUBLE_EQ(r.scale(), 1.0);
  for (int layer = 0; layer < c.num_hidden_layers; ++layer)
    for (auto m : {model::Module::kQ, model::Module::kV}) {
      const auto* a = l.find(layer, m);
      const auto* b = r.find(layer, m);
      ASSERT_NE(b, nullptr);
      // Same low-rank update: scale * B A
      EXPECT_TRUE(at::allclose(at::matmul(a->b, a->a) * l.scale(), at::matmul(b->b, b->a) * r.scale(), 1e-6, 1e-6));
    }
  // Index 2l = q, 2l+1 = v of layer l.
  EXPECT_TRUE(at::equal(raw.at("w_b_003"), l.find(1, model::Module::kV)->b));
  EXPECT_TRUE(at::equal(r.head_weight(), l.head_weight()));
  EXPECT_TRUE(at::equal(r.head_bias(), at::zeros({5})));
}

TEST(Official, WrongCountOfAdaptersRejected) {
  test::TempDir dir;
  const auto c = test::tiny_config();
  io::save_safetensors(dir.file("x.safetensors"), {{"w_a_000", at::zeros({4, 32})}, {"w_b_000", at::zeros({32, 4})}});
  EXPECT_THROW(load_official(dir.file("x.safetensors"), c), InputError);
}

}  // namespace
}  // namespace lorarec::model
