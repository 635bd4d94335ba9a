#include "lorarecycle/model/clip_config.h"

#include <gtest/gtest.h>

#include "lorarecycle/util/error.h"

namespace lorarec::model {
namespace {

TEST(ClipConfig, NestedClipConfigLikeOpenAiB16) {
  const auto c = parse_clip_config(R"({"projection_dim": 512, "text_config": {"hidden_size": 512},
      "vision_config": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
      "num_attention_heads": 12, "image_size": 224, "patch_size": 16, "projection_dim": 999,
      "hidden_act": "quick_gelu", "layer_norm_eps": 1e-05, "dropout": 0.0, "initializer_factor": 1.0}})",
                                   "config.json");
  EXPECT_EQ(c.patch_size, 16);
  EXPECT_EQ(c.projection_dim, 512) << "CLIPConfig's top-level projection_dim wins";
  EXPECT_EQ(c.num_patches(), 196);
  EXPECT_EQ(c.hidden_act, Activation::kQuickGelu);
}

TEST(ClipConfig, FlatVisionConfigWithHfDefaults) {
  const auto c =
      parse_clip_config(R"({"model_type": "clip_vision_model", "hidden_act": "gelu", "patch_size": null})", "c");
  EXPECT_EQ(c.hidden_size, 768);
  EXPECT_EQ(c.patch_size, 32);
  EXPECT_EQ(c.hidden_act, Activation::kGelu);
}

TEST(ClipConfig, BadValuesRejected) {
  EXPECT_THROW(parse_clip_config("{", "c"), InputError);
  EXPECT_THROW(parse_clip_config(R"({"hidden_act": "relu"})", "c"), InputError);
  EXPECT_THROW(parse_clip_config(R"({"hidden_size": "wide"})", "c"), InputError);
  EXPECT_THROW(parse_clip_config(R"({"hidden_size": 100, "num_attention_heads": 12})", "c"), InputError);
  EXPECT_THROW(parse_clip_config(R"({"image_size": 100, "patch_size": 16})", "c"), InputError);
}

TEST(ClipConfig, PreprocessorMeanStdAndExportRoundTrip) {
  ClipVisionConfig c;
  apply_preprocessor_config(c, R"({"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.5]})", "p");
  EXPECT_EQ(c.image_std[2], 0.5);
  EXPECT_THROW(apply_preprocessor_config(c, R"({"image_mean": [0.5]})", "p"), InputError);
  c.patch_size = 16;
  const auto back = parse_clip_config(to_config_json(c), "x");
  EXPECT_EQ(back.patch_size, 16);
  EXPECT_EQ(back.projection_dim, c.projection_dim);
}

}  // namespace
}  // namespace lorarec::model
