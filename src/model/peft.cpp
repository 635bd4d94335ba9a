#include "lorarecycle/model/peft.h"

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <regex>
#include <set>

#include "lorarecycle/io/safetensors.h"
#include "lorarecycle/util/error.h"
#include "lorarecycle/util/fs.h"
#include "lorarecycle/util/log.h"
#include "lorarecycle/util/provenance.h"

namespace lorarec::model {
namespace {

using json = nlohmann::json;
namespace stdfs = std::filesystem;

const std::string kPrefix = "base_model.model.vision_model.encoder.layers.";
const std::string kHeadW = "base_model.model.classifier.weight";
const std::string kHeadB = "base_model.model.classifier.bias";

at::Tensor checked_float(const io::SafetensorsFile& f, const std::string& key) {
  const at::Tensor t = f.tensor(key);
  if (!at::isFloatingType(t.scalar_type())) throw InputError(f.path() + ": tensor '" + key + "' is not floating point");
  at::Tensor out = t.to(at::kFloat).clone();  // owned: adapters are trained in place
  if (!at::isfinite(out).all().item<bool>()) throw InputError(f.path() + ": tensor '" + key + "' holds NaN or Inf");
  return out;
}

template <typename F>
auto with_file_context(const std::string& origin, F&& f) {
  try {
    return f();
  } catch (const InputError& e) {
    const std::string what = e.what();
    if (what.rfind(origin, 0) == 0) throw;
    throw InputError(origin + ": " + what);
  }
}

}  // namespace

namespace {

// adapter_config.json as a LoraConfig (PEFT's defaults for what it leaves out; target modules
// empty when it names none) and its layers_to_transform (empty: any).
model::LoraConfig read_peft_config(const std::string& origin, const stdfs::path& cfg_path,
                                   std::set<int>* allowed_layers) {
  json cfg;
  try {
    cfg = json::parse(fs::read_text(cfg_path));
  } catch (const json::exception& e) {
    throw InputError(origin + ": invalid JSON (" + e.what() + ")");
  }
  if (!cfg.is_object()) throw InputError(origin + ": not a JSON object");
  model::LoraConfig lc;
  lc.r = 8;  // PEFT's defaults
  lc.alpha = 8;
  lc.target_modules.clear();
  auto get_num = [&](const char* key, auto& out) {
    auto it = cfg.find(key);
    if (it == cfg.end() || it->is_null()) return;
    if (!it->is_number()) throw InputError(origin + ": '" + key + "' must be a number");
    out = it->get<std::remove_reference_t<decltype(out)>>();
  };
  if (auto it = cfg.find("peft_type"); it != cfg.end() && !it->is_null() && *it != "LORA")
    throw InputError(origin + ": peft_type " + it->dump() + " is not LORA");
  get_num("r", lc.r);
  get_num("lora_alpha", lc.alpha);
  if (auto it = cfg.find("use_rslora"); it != cfg.end() && it->is_boolean() && it->get<bool>())
    throw InputError(origin + ": use_rslora is not supported");
  for (const char* key : {"rank_pattern", "alpha_pattern"})
    if (auto it = cfg.find(key); it != cfg.end() && it->is_object() && !it->empty())
      throw InputError(origin + ": '" + key + "' (per-module ranks) is not supported");
  if (auto it = cfg.find("target_modules"); it != cfg.end() && !it->is_null()) {
    std::vector<std::string> names;
    if (it->is_string())
      names.push_back(it->get<std::string>());
    else if (it->is_array())
      for (const auto& v : *it) {
        if (!v.is_string()) throw InputError(origin + ": target_modules must hold strings");
        names.push_back(v.get<std::string>());
      }
    else
      throw InputError(origin + ": target_modules must be a list of names");
    for (const auto& n : names) {
      try {
        lc.target_modules.push_back(model::parse_module(n));
      } catch (const InputError& e) {
        throw InputError(origin + ": " + e.what());
      }
    }
  }
  if (auto it = cfg.find("layers_to_transform"); it != cfg.end() && !it->is_null()) {
    if (it->is_number_integer())
      allowed_layers->insert(it->get<int>());
    else if (it->is_array())
      for (const auto& v : *it) {
        if (!v.is_number_integer()) throw InputError(origin + ": layers_to_transform must hold integers");
        allowed_layers->insert(v.get<int>());
      }
    else
      throw InputError(origin + ": layers_to_transform must be an integer or a list");
  }

  return lc;
}

// The tensors of adapter_model.safetensors: LoRA A/B per (layer, module), the classifier head.
struct PeftWeights {
  std::map<std::pair<int, int>, model::Adapter> found;
  std::set<int> modules_seen;
  at::Tensor head_w, head_b;
};
PeftWeights read_peft_weights(const stdfs::path& w_path) {
  PeftWeights w;
  auto& found = w.found;
  auto& modules_seen = w.modules_seen;
  auto& head_w = w.head_w;
  auto& head_b = w.head_b;
  const io::SafetensorsFile file = io::SafetensorsFile::open(w_path.string());
  static const std::regex kKey(
      R"(base_model\.model\.vision_model\.encoder\.layers\.(\d+)\.((?:self_attn|mlp)\.\w+)\.lora_([AB])\.weight)");
  for (const auto& [key, info] : file.tensors()) {
    std::smatch m;
    if (std::regex_match(key, m, kKey)) {
      const int layer = std::stoi(m[1].str());
      model::Module mod;
      try {
        mod = model::parse_module(m[2].str());
      } catch (const InputError& e) {
        throw InputError(w_path.string() + ": tensor '" + key + "': " + e.what());
      }
      auto& ad = found[{layer, static_cast<int>(mod)}];
      (m[3].str() == "A" ? ad.a : ad.b) = checked_float(file, key);
      modules_seen.insert(static_cast<int>(mod));
    } else if (key == kHeadW || key == "base_model.model.classifier.modules_to_save.default.weight") {
      head_w = checked_float(file, key);
    } else if (key == kHeadB || key == "base_model.model.classifier.modules_to_save.default.bias") {
      head_b = checked_float(file, key);
    } else {
      throw InputError(w_path.string() + ": unexpected tensor '" + key + "'");
    }
  }
  return w;
}

}  // namespace

model::Lora load_peft(const std::string& dir, const model::ClipVisionConfig& vit) {
  const stdfs::path cfg_path = stdfs::path(dir) / kPeftConfig;
  const stdfs::path w_path = stdfs::path(dir) / kPeftWeights;
  if (!stdfs::exists(dir)) throw InputError(dir + ": no such directory (a PEFT adapter directory was expected)");
  if (!stdfs::is_directory(dir)) throw InputError(dir + ": not a PEFT adapter directory");
  if (!stdfs::exists(cfg_path)) throw InputError(cfg_path.string() + ": missing");
  if (!stdfs::exists(w_path)) throw InputError(w_path.string() + ": missing");
  const std::string origin = cfg_path.string();
  std::set<int> allowed_layers;
  model::LoraConfig lc = read_peft_config(origin, cfg_path, &allowed_layers);
  PeftWeights w = read_peft_weights(w_path);
  auto& found = w.found;
  auto& head_w = w.head_w;
  auto& head_b = w.head_b;
  if (found.empty()) throw InputError(w_path.string() + ": no LoRA weights found");
  if (lc.target_modules.empty())
    for (int m : w.modules_seen) lc.target_modules.push_back(static_cast<model::Module>(m));
  std::set<int> layers;
  for (const auto& [key, ad] : found) {
    const auto mod = static_cast<model::Module>(key.second);
    if (std::find(lc.target_modules.begin(), lc.target_modules.end(), mod) == lc.target_modules.end())
      throw InputError(w_path.string() + ": weights for module " + model::module_name(mod) +
                       " not in target_modules of " + origin);
    if (!allowed_layers.empty() && !allowed_layers.count(key.first))
      throw InputError(w_path.string() + ": weights for layer " + std::to_string(key.first) +
                       " not in layers_to_transform");
    if (!ad.a.defined() || !ad.b.defined())
      throw InputError(w_path.string() + ": layer " + std::to_string(key.first) + " " + model::module_name(mod) +
                       " lacks lora_A or lora_B");
    layers.insert(key.first);
  }
  lc.layers.assign(layers.begin(), layers.end());
  model::Lora lora = with_file_context(origin, [&] { return model::Lora::empty(vit, lc); });
  for (auto& entry : found) {  // (not a structured binding: lambdas below capture them)
    const auto& key = entry.first;
    auto& ad = entry.second;
    if (ad.a.size(0) != lc.r)
      throw InputError(w_path.string() + ": lora_A of layer " + std::to_string(key.first) + " has rank " +
                       std::to_string(ad.a.size(0)) + " but " + origin + " says r = " + std::to_string(lc.r));
    with_file_context(w_path.string(), [&] {
      lora.set(key.first, static_cast<model::Module>(key.second), std::move(ad));
      return 0;
    });
  }
  if (head_w.defined() != head_b.defined())
    throw InputError(w_path.string() + ": classifier head lacks weight or bias");
  if (head_w.defined())
    with_file_context(w_path.string(), [&] {
      lora.set_head(head_w, head_b);
      return 0;
    });
  return lora;
}

std::string recorded_base_digest(const std::string& dir) {
  const io::SafetensorsFile file = io::SafetensorsFile::open((stdfs::path(dir) / kPeftWeights).string());
  const auto it = file.metadata().find(kBaseDigest);
  return it == file.metadata().end() ? std::string() : it->second;
}

std::string adapter_digest(const std::string& dir) { return prov::file_digest(stdfs::path(dir) / kPeftWeights); }

std::string adapters_digest(const std::vector<std::string>& dirs) {
  std::uint64_t h = prov::hash_bytes(nullptr, 0);
  for (const auto& d : dirs) {
    const std::string one = adapter_digest(d);
    h = prov::hash_bytes(one.data(), one.size(), h);
  }
  return prov::hex(h);
}

void check_base_model(const std::string& dir, const std::string& model_path) {
  if (stdfs::exists(stdfs::path(dir) / kPeftWeights) && !model_path.empty()) {
    const std::string had = recorded_base_digest(dir);
    if (!had.empty()) {
      const std::string now = io::checked_model_digest(model_path);
      if (had != now) {
        std::string base;
        try {
          base = json::parse(fs::read_text(stdfs::path(dir) / kPeftConfig))
                     .value("base_model_name_or_path", std::string());
        } catch (const std::exception&) {
        }
        throw InputError(dir + ": this LoRA was tuned on another VFM (" + (base.empty() ? std::string() : base + ", ") +
                         "digest " + had + ") than --model " + model_path + " (digest " + now +
                         "); use the VFM it was tuned on");
      }
    }
  }
}

model::Lora load_peft(const std::string& dir, const model::ClipVisionConfig& vit, const std::string& model_path) {
  check_base_model(dir, model_path);
  return load_peft(dir, vit);
}

void save_peft(const std::string& dir, const model::Lora& lora, const std::string& base_model,
               const std::map<std::string, std::string>& extra_files) {
  std::map<std::string, at::Tensor> tensors;
  std::vector<std::string> targets;
  for (auto m : lora.config().target_modules) targets.push_back(model::module_name(m));
  for (const auto& [key, ad] : lora.adapters()) {
    const std::string base =
        kPrefix + std::to_string(key.first) + "." + model::module_path(static_cast<model::Module>(key.second));
    tensors[base + ".lora_A.weight"] = ad.a.detach();
    tensors[base + ".lora_B.weight"] = ad.b.detach();
  }
  json cfg = {{"peft_type", "LORA"},
              {"r", lora.config().r},
              {"lora_alpha", lora.config().alpha},
              {"target_modules", targets},
              {"layers_to_transform", lora.config().layers},
              {"lora_dropout", 0.0},
              {"bias", "none"},
              {"fan_in_fan_out", false},
              {"inference_mode", true},
              {"task_type", nullptr},
              {"base_model_name_or_path", base_model},
              {"modules_to_save", lora.has_head() ? json::array({"classifier"}) : json(nullptr)}};
  if (lora.has_head()) {
    tensors[kHeadW] = lora.head_weight().detach();
    tensors[kHeadB] = lora.head_bias().detach();
  }
  fs::write_atomically(dir, [&](const stdfs::path& tmp) {
    stdfs::create_directories(tmp);
    std::map<std::string, std::string> meta = {{"format", "pt"}, {"producer", "lorarecycle"}};
    std::error_code ec;
    if (!base_model.empty() && stdfs::exists(base_model, ec)) meta[kBaseDigest] = prov::model_digest(base_model);
    io::save_safetensors((tmp / kPeftWeights).string(), tensors, meta);
    fs::write_text(tmp / kPeftConfig, cfg.dump(2) + "\n");
    for (const auto& [name, text] : extra_files) fs::write_text(tmp / name, text);
  });
}

model::Lora load_official(const std::string& path, const model::ClipVisionConfig& vit) {
  const io::SafetensorsFile file = io::SafetensorsFile::open(path);
  static const std::regex kW(R"(w_([ab])_(\d{3}))");
  static const std::regex kHead(R"(fc_(\d+)in_(\d+)out)");
  std::map<int, at::Tensor> a, b;
  at::Tensor head_w;
  for (const auto& [key, info] : file.tensors()) {
    std::smatch m;
    if (std::regex_match(key, m, kW)) {
      (m[1].str() == "a" ? a : b)[std::stoi(m[2].str())] = checked_float(file, key);
    } else if (std::regex_match(key, m, kHead)) {
      if (head_w.defined()) throw InputError(path + ": more than one head tensor");
      head_w = checked_float(file, key);
      if (head_w.dim() != 2 || head_w.size(0) != std::stoll(m[2].str()) || head_w.size(1) != std::stoll(m[1].str()))
        throw InputError(path + ": head '" + key + "' has a shape that does not match its name");
    } else {
      throw InputError(path + ": unexpected tensor '" + key + "' in an official-format LoRA file");
    }
  }
  const int expected = 2 * vit.num_hidden_layers;
  if (static_cast<int>(a.size()) != expected || static_cast<int>(b.size()) != expected)
    throw InputError(path + ": expected w_a_000..w_a_" + std::to_string(expected - 1) + " and w_b_*, found " +
                     std::to_string(a.size()) + " and " + std::to_string(b.size()));
  for (int i = 0; i < expected; ++i)
    if (!a.count(i) || !b.count(i)) throw InputError(path + ": missing w_a/w_b index " + std::to_string(i));
  model::LoraConfig lc;
  lc.r = static_cast<int>(a.at(0).size(0));
  lc.alpha = lc.r;  // the official code has no scaling
  lc.target_modules = {model::Module::kQ, model::Module::kV};
  model::Lora lora = with_file_context(path, [&] { return model::Lora::empty(vit, lc); });
  for (int i = 0; i < expected; ++i)
    with_file_context(path, [&] {
      lora.set(i / 2, i % 2 == 0 ? model::Module::kQ : model::Module::kV, model::Adapter{a.at(i), b.at(i)});
      return 0;
    });
  if (head_w.defined()) {
    LOG_WARN("io", path << ": the official format saves no head bias; using zeros");
    with_file_context(path, [&] {
      lora.set_head(head_w, at::zeros({head_w.size(0)}, at::kFloat));
      return 0;
    });
  }
  return lora;
}

void save_official(const std::string& path, const model::Lora& lora) {
  std::map<std::string, at::Tensor> tensors;
  const int layers = static_cast<int>(lora.config().layers.size());
  char name[32];
  for (int l = 0; l < layers; ++l)
    for (int j = 0; j < 2; ++j) {
      const model::Adapter* ad = lora.find(l, j == 0 ? model::Module::kQ : model::Module::kV);
      if (ad == nullptr) throw InputError("the official format needs q_proj and v_proj adapters on every layer");
      std::snprintf(name, sizeof name, "w_a_%03d", 2 * l + j);
      tensors[name] = ad->a.detach() * lora.scale();  // fold the scale in: official scale is 1
      std::snprintf(name, sizeof name, "w_b_%03d", 2 * l + j);
      tensors[name] = ad->b.detach();
    }
  if (lora.has_head()) {
    std::snprintf(name, sizeof name, "fc_%ldin_%ldout", static_cast<long>(lora.head_weight().size(1)),
                  static_cast<long>(lora.head_weight().size(0)));
    tensors[name] = lora.head_weight().detach();
  }
  io::save_safetensors(path, tensors);
}

}  // namespace lorarec::model
