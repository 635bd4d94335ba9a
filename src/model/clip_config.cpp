#include "lorarecycle/model/clip_config.h"

#include <nlohmann/json.hpp>

#include <filesystem>

#include "lorarecycle/util/error.h"
#include "lorarecycle/util/fs.h"

namespace lorarec::model {
namespace {
using json = nlohmann::json;

json parse_json(const std::string& text, const std::string& origin) {
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    throw InputError(origin + ": invalid JSON (" + e.what() + ")");
  }
}

template <typename T>
void read_field(const json& obj, const char* key, T& out, const std::string& origin) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return;
  try {
    if constexpr (std::is_integral_v<T>) {
      if (!it->is_number_integer()) throw InputError("");
    } else {
      if (!it->is_number()) throw InputError("");
    }
    out = it->get<T>();
  } catch (const std::exception&) {
    throw InputError(origin + ": field '" + key + "' has the wrong type (" + it->dump() + ")");
  }
}

void read_triplet(const json& obj, const char* key, std::array<double, 3>& out, const std::string& origin) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return;
  if (!it->is_array() || it->size() != 3)
    throw InputError(origin + ": field '" + std::string(key) + "' must be an array of 3 numbers");
  for (int i = 0; i < 3; ++i) {
    if (!(*it)[i].is_number()) throw InputError(origin + ": field '" + std::string(key) + "' must hold numbers");
    out[i] = (*it)[i].get<double>();
  }
}
}  // namespace

const char* activation_name(Activation act) { return act == Activation::kGelu ? "gelu" : "quick_gelu"; }

Activation parse_activation(const std::string& name, const std::string& origin) {
  if (name == "quick_gelu") return Activation::kQuickGelu;
  if (name == "gelu") return Activation::kGelu;
  throw InputError(origin + ": unsupported hidden_act '" + name + "' (supported: quick_gelu, gelu)");
}

void ClipVisionConfig::validate(const std::string& origin) const {
  auto positive = [&](int v, const char* name) {
    if (v <= 0) throw InputError(origin + ": " + name + " must be positive, got " + std::to_string(v));
  };
  positive(hidden_size, "hidden_size");
  positive(intermediate_size, "intermediate_size");
  positive(num_hidden_layers, "num_hidden_layers");
  positive(num_attention_heads, "num_attention_heads");
  positive(num_channels, "num_channels");
  positive(image_size, "image_size");
  positive(patch_size, "patch_size");
  positive(projection_dim, "projection_dim");
  if (hidden_size % num_attention_heads != 0)
    throw InputError(origin + ": hidden_size " + std::to_string(hidden_size) +
                     " is not divisible by num_attention_heads " + std::to_string(num_attention_heads));
  if (image_size % patch_size != 0)
    throw InputError(origin + ": image_size " + std::to_string(image_size) + " is not divisible by patch_size " +
                     std::to_string(patch_size));
  if (!(layer_norm_eps > 0)) throw InputError(origin + ": layer_norm_eps must be positive");
  for (double s : image_std)
    if (!(s > 0)) throw InputError(origin + ": image_std must be positive");
}

ClipVisionConfig parse_clip_config(const std::string& text, const std::string& origin) {
  const json top = parse_json(text, origin);
  if (!top.is_object()) throw InputError(origin + ": config is not a JSON object");
  ClipVisionConfig cfg;
  const bool nested = top.contains("vision_config") && top.at("vision_config").is_object();
  const json& v = nested ? top.at("vision_config") : top;
  read_field(v, "hidden_size", cfg.hidden_size, origin);
  read_field(v, "intermediate_size", cfg.intermediate_size, origin);
  read_field(v, "num_hidden_layers", cfg.num_hidden_layers, origin);
  read_field(v, "num_attention_heads", cfg.num_attention_heads, origin);
  read_field(v, "num_channels", cfg.num_channels, origin);
  read_field(v, "image_size", cfg.image_size, origin);
  read_field(v, "patch_size", cfg.patch_size, origin);
  read_field(v, "projection_dim", cfg.projection_dim, origin);
  if (nested) read_field(top, "projection_dim", cfg.projection_dim, origin);  // CLIPConfig's wins
  read_field(v, "layer_norm_eps", cfg.layer_norm_eps, origin);
  if (auto it = v.find("hidden_act"); it != v.end() && !it->is_null()) {
    if (!it->is_string()) throw InputError(origin + ": field 'hidden_act' must be a string");
    cfg.hidden_act = parse_activation(it->get<std::string>(), origin);
  }
  cfg.validate(origin);
  return cfg;
}

void apply_preprocessor_config(ClipVisionConfig& cfg, const std::string& text, const std::string& origin) {
  const json j = parse_json(text, origin);
  if (!j.is_object()) throw InputError(origin + ": preprocessor config is not a JSON object");
  read_triplet(j, "image_mean", cfg.image_mean, origin);
  read_triplet(j, "image_std", cfg.image_std, origin);
  cfg.validate(origin);
}

ClipVisionConfig load_clip_config(const std::string& dir) {
  namespace stdfs = std::filesystem;
  const stdfs::path cfg_path = stdfs::path(dir) / "config.json";
  if (!stdfs::exists(cfg_path)) throw InputError(cfg_path.string() + ": missing (expected an HF CLIP model directory)");
  ClipVisionConfig cfg = parse_clip_config(fs::read_text(cfg_path), cfg_path.string());
  const stdfs::path pre = stdfs::path(dir) / "preprocessor_config.json";
  if (stdfs::exists(pre)) apply_preprocessor_config(cfg, fs::read_text(pre), pre.string());
  return cfg;
}

std::string to_config_json(const ClipVisionConfig& c) {
  json vision = {{"hidden_size", c.hidden_size},
                 {"intermediate_size", c.intermediate_size},
                 {"num_hidden_layers", c.num_hidden_layers},
                 {"num_attention_heads", c.num_attention_heads},
                 {"num_channels", c.num_channels},
                 {"image_size", c.image_size},
                 {"patch_size", c.patch_size},
                 {"projection_dim", c.projection_dim},
                 {"layer_norm_eps", c.layer_norm_eps},
                 {"hidden_act", activation_name(c.hidden_act)},
                 {"model_type", "clip_vision_model"}};
  json top = {{"architectures", {"CLIPModel"}},     {"model_type", "clip"},
              {"projection_dim", c.projection_dim}, {"vision_config", vision},
              {"torch_dtype", "float32"},           {"_lorarecycle", "exported by lorarecycle; text tower absent"}};
  return top.dump(2) + "\n";
}

std::string to_preprocessor_json(const ClipVisionConfig& c) {
  json j = {{"image_mean", c.image_mean},
            {"image_std", c.image_std},
            {"size", {{"shortest_edge", c.image_size}}},
            {"crop_size", {{"height", c.image_size}, {"width", c.image_size}}},
            {"do_normalize", true},
            {"image_processor_type", "CLIPImageProcessor"}};
  return j.dump(2) + "\n";
}

}  // namespace lorarec::model
