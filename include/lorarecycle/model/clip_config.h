// Configuration of an HF CLIP vision tower (DESIGN 2.1), read from the files of an HF model
// directory: config.json (CLIPVisionConfig at the top, or CLIPConfig with `vision_config`
// nested and `projection_dim` at the top) and preprocessor_config.json (image_mean/image_std).
// Missing fields take HF's CLIPVisionConfig defaults; null counts as missing.
#pragma once

#include <array>
#include <string>

namespace lorarec::model {

enum class Activation { kQuickGelu, kGelu };

struct ClipVisionConfig {
  int hidden_size = 768;         // D, width of the residual stream
  int intermediate_size = 3072;  // MLP width
  int num_hidden_layers = 12;    // L
  int num_attention_heads = 12;  // H; D must be divisible by H
  int num_channels = 3;          // input channels
  int image_size = 224;          // input side in pixels
  int patch_size = 32;           // HF's default (B/16 configs say 16)
  int projection_dim = 512;      // feature width after visual_projection
  double layer_norm_eps = 1e-5;  // every LayerNorm
  Activation hidden_act = Activation::kQuickGelu;
  std::array<double, 3> image_mean{0.48145466, 0.4578275, 0.40821073};  // CLIP's constants
  std::array<double, 3> image_std{0.26862954, 0.26130258, 0.27577711};

  int head_dim() const { return hidden_size / num_attention_heads; }
  int grid() const { return image_size / patch_size; }
  int num_patches() const { return grid() * grid(); }
  // Throws InputError(origin: ...) when fields are inconsistent (non-positive, not divisible).
  void validate(const std::string& origin) const;
};

const char* activation_name(Activation act);
// "quick_gelu" or "gelu" (HF's "gelu" is the exact erf form); throws InputError otherwise.
Activation parse_activation(const std::string& name, const std::string& origin);

// Reads dir/config.json and, when present, dir/preprocessor_config.json.
ClipVisionConfig load_clip_config(const std::string& dir);
// Parses the text of a config.json; `origin` names it in errors.
ClipVisionConfig parse_clip_config(const std::string& json_text, const std::string& origin);
// Applies image_mean/image_std of a preprocessor_config.json text.
void apply_preprocessor_config(ClipVisionConfig& cfg, const std::string& json_text, const std::string& origin);

// HF-style config.json (CLIPConfig with vision_config nested, projection_dim at the top) and
// preprocessor_config.json texts for exporting our own models.
std::string to_config_json(const ClipVisionConfig& cfg);
std::string to_preprocessor_json(const ClipVisionConfig& cfg);

}  // namespace lorarec::model
