#include "lorarecycle/model/vit.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/grad_mode.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/custom_function.h>
#if __has_include(<torch/version.h>)
#include <torch/version.h>
#endif
#if defined(TORCH_VERSION_MAJOR) && (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4))
#define LORAREC_AUTOCAST_BY_DEVICE 1  // LibTorch >= 2.4: autocast state per device type
#endif
#if defined(TORCH_VERSION_MAJOR) && TORCH_VERSION_MAJOR >= 2
#define LORAREC_HAVE_SDPA 1  // LibTorch >= 2.0: at::scaled_dot_product_attention
#endif

#include "model/cpu_kernels.h"

#ifdef LORAREC_HAVE_CBLAS
#include <cblas.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <type_traits>

#include "lorarecycle/io/safetensors.h"
#include "lorarecycle/util/env.h"
#include "lorarecycle/util/error.h"
#include "lorarecycle/util/fs.h"
#include "lorarecycle/util/log.h"
#include "lorarecycle/util/phase_clock.h"

namespace lorarec::model {
namespace {

using OptTensor = c10::optional<at::Tensor>;

constexpr const char* kModuleNames[kNumModules] = {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"};
constexpr const char* kModulePaths[kNumModules] = {"self_attn.q_proj",   "self_attn.k_proj", "self_attn.v_proj",
                                                   "self_attn.out_proj", "mlp.fc1",          "mlp.fc2"};

// (out, in) features of a module's Linear.
std::pair<int64_t, int64_t> module_shape(const ClipVisionConfig& c, Module m) {
  switch (m) {
    case Module::kFc1:
      return {c.intermediate_size, c.hidden_size};
    case Module::kFc2:
      return {c.hidden_size, c.intermediate_size};
    default:
      return {c.hidden_size, c.hidden_size};
  }
}

std::string shape_str(at::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

at::Generator make_gen(std::uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

at::Tensor uniform(at::IntArrayRef shape, double bound, at::Generator& gen) {
  return at::empty(shape, at::kFloat).uniform_(-bound, bound, gen);
}
at::Tensor normal(at::IntArrayRef shape, double std, at::Generator& gen) {
  return at::empty(shape, at::kFloat).normal_(0.0, std, gen);
}

const std::string kVision = "vision_model.";
const std::string kProjection = "visual_projection.weight";

std::string layer_key(int l, const std::string& rest) {
  return kVision + "encoder.layers." + std::to_string(l) + "." + rest;
}

}  // namespace

const char* module_name(Module m) { return kModuleNames[static_cast<int>(m)]; }
const char* module_path(Module m) { return kModulePaths[static_cast<int>(m)]; }

Module parse_module(const std::string& name) {
  for (int i = 0; i < kNumModules; ++i)
    if (name == kModuleNames[i] || name == kModulePaths[i]) return static_cast<Module>(i);
  throw InputError("unknown LoRA target module '" + name + "' (known: q_proj, k_proj, v_proj, out_proj, fc1, fc2)");
}

void LoraConfig::validate(const ClipVisionConfig& vit, const std::string& origin) const {
  if (r <= 0) throw InputError(origin + ": LoRA rank r must be positive, got " + std::to_string(r));
  if (!(alpha > 0) || !std::isfinite(alpha)) throw InputError(origin + ": lora_alpha must be positive and finite");
  if (target_modules.empty()) throw InputError(origin + ": no LoRA target modules");
  for (int l : layers)
    if (l < 0 || l >= vit.num_hidden_layers)
      throw InputError(origin + ": LoRA layer " + std::to_string(l) + " outside [0, " +
                       std::to_string(vit.num_hidden_layers) + ")");
}

// ---- Lora ------------------------------------------------------------------------------

Lora::Lora(const ClipVisionConfig& vit, const LoraConfig& cfg, std::uint64_t seed) : vit_(vit), config_(cfg) {
  cfg.validate(vit, "LoRA config");
  auto gen = make_gen(seed);
  std::vector<int> layers = cfg.layers;
  if (layers.empty())
    for (int l = 0; l < vit.num_hidden_layers; ++l) layers.push_back(l);
  std::sort(layers.begin(), layers.end());
  layers.erase(std::unique(layers.begin(), layers.end()), layers.end());
  config_.layers = layers;
  for (int l : layers)
    for (Module m : cfg.target_modules) {
      const auto [out, in] = module_shape(vit, m);
      // kaiming_uniform_(a = sqrt(5)) on [r, in]: bound = sqrt(6 / ((1 + 5) * in)) = 1 / sqrt(in)
      adapters_[{l, static_cast<int>(m)}] =
          Adapter{uniform({cfg.r, in}, 1.0 / std::sqrt(double(in)), gen), at::zeros({out, cfg.r}, at::kFloat)};
    }
}

Lora Lora::empty(const ClipVisionConfig& vit, const LoraConfig& cfg) {
  cfg.validate(vit, "LoRA config");
  Lora l;
  l.vit_ = vit;
  l.config_ = cfg;
  return l;
}

const Adapter* Lora::find(int layer, Module m) const {
  auto it = adapters_.find({layer, static_cast<int>(m)});
  return it == adapters_.end() ? nullptr : &it->second;
}
Adapter* Lora::find(int layer, Module m) {
  auto it = adapters_.find({layer, static_cast<int>(m)});
  return it == adapters_.end() ? nullptr : &it->second;
}

void Lora::set(int layer, Module m, Adapter adapter) {
  const auto [out, in] = module_shape(vit_, m);
  const std::string where = std::string("layer ") + std::to_string(layer) + " " + module_name(m);
  if (layer < 0 || layer >= vit_.num_hidden_layers) throw InputError("LoRA " + where + ": layer out of range");
  if (adapter.a.dim() != 2 || adapter.a.size(0) != config_.r || adapter.a.size(1) != in)
    throw InputError("LoRA " + where + ": lora_A has shape " + shape_str(adapter.a.sizes()) + ", expected [" +
                     std::to_string(config_.r) + ", " + std::to_string(in) + "]");
  if (adapter.b.dim() != 2 || adapter.b.size(0) != out || adapter.b.size(1) != config_.r)
    throw InputError("LoRA " + where + ": lora_B has shape " + shape_str(adapter.b.sizes()) + ", expected [" +
                     std::to_string(out) + ", " + std::to_string(config_.r) + "]");
  adapters_[{layer, static_cast<int>(m)}] = std::move(adapter);
}

void Lora::init_head(int n_classes, std::uint64_t seed) {
  auto gen = make_gen(seed);
  const double bound = 1.0 / std::sqrt(double(vit_.projection_dim));
  head_weight_ = uniform({n_classes, vit_.projection_dim}, bound, gen);
  head_bias_ = uniform({n_classes}, bound, gen);
}

void Lora::set_head(at::Tensor weight, at::Tensor bias) {
  if (weight.dim() != 2 || weight.size(1) != vit_.projection_dim)
    throw InputError("classifier head weight has shape " + shape_str(weight.sizes()) + ", expected [n_classes, " +
                     std::to_string(vit_.projection_dim) + "]");
  if (bias.dim() != 1 || bias.size(0) != weight.size(0))
    throw InputError("classifier head bias has shape " + shape_str(bias.sizes()) + ", expected [" +
                     std::to_string(weight.size(0)) + "]");
  head_weight_ = std::move(weight);
  head_bias_ = std::move(bias);
}

at::Tensor Lora::head(const at::Tensor& feature) const {
  LORAREC_CHECK(has_head(), "this LoRA has no classifier head");
  return at::linear(feature, head_weight_, head_bias_);
}

std::vector<at::Tensor> Lora::parameters(bool include_head) const {
  std::vector<at::Tensor> out;
  for (const auto& [key, ad] : adapters_) {
    out.push_back(ad.a);
    out.push_back(ad.b);
  }
  if (include_head && has_head()) {
    out.push_back(head_weight_);
    out.push_back(head_bias_);
  }
  return out;
}

void Lora::set_requires_grad(bool on, bool include_head) {
  for (auto& [key, ad] : adapters_) {
    ad.a.requires_grad_(on);
    ad.b.requires_grad_(on);
  }
  if (include_head && has_head()) {
    head_weight_.requires_grad_(on);
    head_bias_.requires_grad_(on);
  }
}

void Lora::to(const c10::Device& device) {
  for (auto& [key, ad] : adapters_) {
    const bool ga = ad.a.requires_grad(), gb = ad.b.requires_grad();
    ad.a = ad.a.detach().to(device).requires_grad_(ga);
    ad.b = ad.b.detach().to(device).requires_grad_(gb);
  }
  if (has_head()) {
    const bool g = head_weight_.requires_grad();
    head_weight_ = head_weight_.detach().to(device).requires_grad_(g);
    head_bias_ = head_bias_.detach().to(device).requires_grad_(g);
  }
}

int64_t Lora::num_parameters(bool include_head) const {
  int64_t n = 0;
  for (const auto& t : parameters(include_head)) n += t.numel();
  return n;
}

void require_same_shape(const std::vector<Lora>& loras, const std::string& what) {
  if (loras.empty()) throw InputError(what + ": no LoRAs to combine");
  const LoraConfig& c0 = loras[0].config();
  for (const auto& l : loras) {
    if (l.config().r != c0.r || l.config().scale() != c0.scale() || l.adapters().size() != loras[0].adapters().size())
      throw InputError(what + ": the zoo's LoRAs differ in rank, scale or targets; they cannot be combined");
    for (const auto& [key, _] : loras[0].adapters())
      if (!l.adapters().count(key)) throw InputError(what + ": the zoo's LoRAs differ in their targets");
  }
}

Lora average_loras(const std::vector<Lora>& loras, const ClipVisionConfig& vit) {
  require_same_shape(loras, "lora-avg");
  const LoraConfig& c0 = loras[0].config();
  const int K = static_cast<int>(loras.size());
  LoraConfig cfg = c0;
  cfg.r = c0.r * K;
  cfg.alpha = c0.scale() * cfg.r;  // same scale
  Lora avg = Lora::empty(vit, cfg);
  for (const auto& [key, _] : loras[0].adapters()) {
    std::vector<at::Tensor> as, bs;
    for (const auto& l : loras) {
      const auto& ad = l.adapters().at(key);
      as.push_back(ad.a.to(at::kCPU, at::kFloat));
      bs.push_back(ad.b.to(at::kCPU, at::kFloat) / double(K));
    }
    avg.set(key.first, static_cast<Module>(key.second), Adapter{at::cat(as, 0), at::cat(bs, 1)});
  }
  return avg;
}

Lora low_rank(const Lora& src, int r, double alpha, double* kept_share) {
  LoraConfig cfg = src.config();
  cfg.r = r;
  cfg.alpha = alpha;
  Lora out = Lora::empty(src.vit_config(), cfg);
  const double s = cfg.scale();
  double total = 0, kept = 0;
  for (const auto& [key, ad] : src.adapters()) {
    const at::Tensor delta = (ad.b.to(at::kCPU, at::kDouble).matmul(ad.a.to(at::kCPU, at::kDouble))) * src.scale();
    auto [u, sv, vh] = at::linalg_svd(delta, /*full_matrices=*/false);
    const int64_t n = sv.size(0);
    const int64_t k = std::min<int64_t>(r, n);
    const at::Tensor root = (sv.narrow(0, 0, k) / s).sqrt();
    at::Tensor b = at::zeros({delta.size(0), r}, at::kDouble), a = at::zeros({r, delta.size(1)}, at::kDouble);
    b.narrow(1, 0, k).copy_(u.narrow(1, 0, k) * root.unsqueeze(0));
    a.narrow(0, 0, k).copy_(vh.narrow(0, 0, k) * root.unsqueeze(1));
    total += sv.pow(2).sum().item<double>();
    kept += sv.narrow(0, 0, k).pow(2).sum().item<double>();
    out.set(key.first, static_cast<Module>(key.second), Adapter{a.to(at::kFloat), b.to(at::kFloat)});
  }
  if (kept_share) *kept_share = total > 0 ? kept / total : 1.0;
  return out;
}

// ---- ClipVision: loading -----------------------------------------------------------------

ClipVision ClipVision::load(const std::string& dir) {
  namespace stdfs = std::filesystem;
  const ClipVisionConfig cfg = load_clip_config(dir);
  const stdfs::path weights = stdfs::path(dir) / "model.safetensors";
  if (!stdfs::exists(weights)) {
    const bool bin = stdfs::exists(stdfs::path(dir) / "pytorch_model.bin") ||
                     stdfs::exists(stdfs::path(dir) / "pytorch_model.bin.index.json");
    throw InputError(
        weights.string() + ": missing (expected HF weights in safetensors format); " +
        (bin ? dir + " holds pytorch_model.bin: convert it once with " : "from an HF pytorch_model.bin: ") +
        "/usr/bin/python3 data_tools/convert_weights.py hf-bin " + dir);
  }
  const io::SafetensorsFile file = io::SafetensorsFile::open(weights.string());
  std::map<std::string, at::Tensor> tensors;
  for (const auto& [name, info] : file.tensors()) {
    if (name.rfind("text_model.", 0) == 0 || name.rfind("text_projection.", 0) == 0 || name == "logit_scale") continue;
    tensors.emplace(name, file.tensor(name));
  }
  return from_tensors(cfg, tensors, weights.string());
}

ClipVision ClipVision::from_tensors(const ClipVisionConfig& cfg, const std::map<std::string, at::Tensor>& tensors,
                                    const std::string& origin) {
  cfg.validate(origin);
  ClipVision m;
  m.config_ = cfg;
  std::set<std::string> used;
  const int64_t D = cfg.hidden_size, I = cfg.intermediate_size, C = cfg.num_channels, p = cfg.patch_size;
  auto take = [&](const std::string& key, std::vector<int64_t> shape) -> at::Tensor {
    auto it = tensors.find(key);
    if (it == tensors.end()) throw InputError(origin + ": missing tensor '" + key + "'");
    used.insert(key);
    const at::Tensor& t = it->second;
    if (!at::isFloatingType(t.scalar_type()))
      throw InputError(origin + ": tensor '" + key + "' has non-float dtype " +
                       std::string(c10::toString(t.scalar_type())));
    if (t.sizes() != at::IntArrayRef(shape))
      throw InputError(origin + ": tensor '" + key + "' has shape " + shape_str(t.sizes()) + ", the config implies " +
                       shape_str(shape));
    at::Tensor f = t.to(at::kFloat);
    if (!at::isfinite(f).all().item<bool>()) throw InputError(origin + ": tensor '" + key + "' holds NaN or Inf");
    return f;
  };
  m.patch_w_ = take(kVision + "embeddings.patch_embedding.weight", {D, C, p, p});
  m.class_emb_ = take(kVision + "embeddings.class_embedding", {D});
  m.pos_emb_ = take(kVision + "embeddings.position_embedding.weight", {cfg.num_patches() + 1, D});
  m.pre_ln_w_ = take(kVision + "pre_layrnorm.weight", {D});
  m.pre_ln_b_ = take(kVision + "pre_layrnorm.bias", {D});
  m.post_ln_w_ = take(kVision + "post_layernorm.weight", {D});
  m.post_ln_b_ = take(kVision + "post_layernorm.bias", {D});
  for (int l = 0; l < cfg.num_hidden_layers; ++l) {
    Layer layer;
    layer.ln1_w = take(layer_key(l, "layer_norm1.weight"), {D});
    layer.ln1_b = take(layer_key(l, "layer_norm1.bias"), {D});
    layer.ln2_w = take(layer_key(l, "layer_norm2.weight"), {D});
    layer.ln2_b = take(layer_key(l, "layer_norm2.bias"), {D});
    for (int i = 0; i < kNumModules; ++i) {
      const auto [out, in] = module_shape(cfg, static_cast<Module>(i));
      layer.w[i] = take(layer_key(l, std::string(kModulePaths[i]) + ".weight"), {out, in});
      layer.b[i] = take(layer_key(l, std::string(kModulePaths[i]) + ".bias"), {out});
    }
    m.layers_.push_back(std::move(layer));
  }
  (void)I;
  if (tensors.count(kProjection)) {
    m.proj_ = take(kProjection, {cfg.projection_dim, D});
  }
  for (const auto& [key, t] : tensors) {
    if (used.count(key) || key == kVision + "embeddings.position_ids") continue;
    if (key.rfind("text_model.", 0) == 0 || key.rfind("text_projection.", 0) == 0 || key == "logit_scale") continue;
    throw InputError(origin + ": unexpected tensor '" + key + "' (does config.json match the weights?)");
  }
  m.refresh_derived_weights();
  return m;
}

ClipVision ClipVision::random(const ClipVisionConfig& cfg, std::uint64_t seed) {
  // HF CLIPPreTrainedModel._init_weights with initializer_factor 1 and initializer_range 0.02.
  cfg.validate("random ViT config");
  auto gen = make_gen(seed);
  const int64_t D = cfg.hidden_size, C = cfg.num_channels, p = cfg.patch_size;
  const double L2 = 2.0 * cfg.num_hidden_layers;
  const double in_std = std::pow(double(D), -0.5) * std::pow(L2, -0.5);  // q, k, v and fc2
  const double out_std = std::pow(double(D), -0.5);                      // out_proj
  const double fc_std = std::pow(2.0 * double(D), -0.5);                 // fc1
  constexpr double kRange = 0.02;
  ClipVision m;
  m.config_ = cfg;
  m.patch_w_ = normal({D, C, p, p}, kRange, gen);
  m.class_emb_ = normal({D}, std::pow(double(D), -0.5), gen);
  m.pos_emb_ = normal({cfg.num_patches() + 1, D}, kRange, gen);
  m.pre_ln_w_ = at::ones({D});
  m.pre_ln_b_ = at::zeros({D});
  m.post_ln_w_ = at::ones({D});
  m.post_ln_b_ = at::zeros({D});
  const double stds[kNumModules] = {in_std, in_std, in_std, out_std, fc_std, in_std};
  for (int l = 0; l < cfg.num_hidden_layers; ++l) {
    Layer layer;
    layer.ln1_w = at::ones({D});
    layer.ln1_b = at::zeros({D});
    layer.ln2_w = at::ones({D});
    layer.ln2_b = at::zeros({D});
    for (int i = 0; i < kNumModules; ++i) {
      const auto [out, in] = module_shape(cfg, static_cast<Module>(i));
      layer.w[i] = normal({out, in}, stds[i], gen);
      layer.b[i] = at::zeros({out});
    }
    m.layers_.push_back(std::move(layer));
  }
  m.proj_ = normal({cfg.projection_dim, D}, std::pow(double(D), -0.5), gen);
  m.refresh_derived_weights();
  return m;
}

std::map<std::string, at::Tensor> ClipVision::state_dict() const {
  std::map<std::string, at::Tensor> out;
  out[kVision + "embeddings.patch_embedding.weight"] = patch_w_;
  out[kVision + "embeddings.class_embedding"] = class_emb_;
  out[kVision + "embeddings.position_embedding.weight"] = pos_emb_;
  out[kVision + "pre_layrnorm.weight"] = pre_ln_w_;
  out[kVision + "pre_layrnorm.bias"] = pre_ln_b_;
  out[kVision + "post_layernorm.weight"] = post_ln_w_;
  out[kVision + "post_layernorm.bias"] = post_ln_b_;
  for (int l = 0; l < static_cast<int>(layers_.size()); ++l) {
    const Layer& layer = layers_[l];
    out[layer_key(l, "layer_norm1.weight")] = layer.ln1_w;
    out[layer_key(l, "layer_norm1.bias")] = layer.ln1_b;
    out[layer_key(l, "layer_norm2.weight")] = layer.ln2_w;
    out[layer_key(l, "layer_norm2.bias")] = layer.ln2_b;
    for (int i = 0; i < kNumModules; ++i) {
      out[layer_key(l, std::string(kModulePaths[i]) + ".weight")] = layer.w[i];
      out[layer_key(l, std::string(kModulePaths[i]) + ".bias")] = layer.b[i];
    }
  }
  if (proj_.defined()) out[kProjection] = proj_;
  return out;
}

std::vector<at::Tensor> ClipVision::parameters() const {
  std::vector<at::Tensor> out;
  for (const auto& [name, t] : state_dict()) out.push_back(t);
  return out;
}

void ClipVision::set_requires_grad(bool on) {
  auto flag = [&](at::Tensor& t) {
    if (t.defined()) t.requires_grad_(on);
  };
  flag(patch_w_), flag(class_emb_), flag(pos_emb_), flag(pre_ln_w_), flag(pre_ln_b_), flag(post_ln_w_),
      flag(post_ln_b_), flag(proj_);
  for (Layer& layer : layers_) {
    flag(layer.ln1_w), flag(layer.ln1_b), flag(layer.ln2_w), flag(layer.ln2_b);
    for (int i = 0; i < kNumModules; ++i) flag(layer.w[i]), flag(layer.b[i]);
  }
  refresh_derived_weights();  // frozen weights get their stacked q/k/v; trained ones lose it
}

void ClipVision::load_values(const std::map<std::string, at::Tensor>& tensors, const std::string& origin) {
  at::NoGradGuard no_grad;
  for (auto& [name, t] : state_dict()) {
    auto it = tensors.find(name);
    if (it == tensors.end()) throw InputError(origin + ": missing tensor '" + name + "'");
    if (it->second.sizes() != t.sizes())
      throw InputError(origin + ": tensor '" + name + "' has shape " + shape_str(it->second.sizes()) + ", expected " +
                       shape_str(t.sizes()));
    at::Tensor dst = t;
    dst.copy_(it->second);
  }
  refresh_derived_weights();
}

void ClipVision::set_precision(Precision p) {
  precision_ = p;
  refresh_derived_weights();
}

void ClipVision::refresh_derived_weights() {
  at::NoGradGuard no_grad;
  const bool on = precision_ == Precision::kBf16;
  const int q = static_cast<int>(Module::kQ), k = static_cast<int>(Module::kK), v = static_cast<int>(Module::kV);
  for (Layer& layer : layers_) {
    for (int i = 0; i < kNumModules; ++i) {
      layer.w_lp[i] = on ? layer.w[i].to(at::kBFloat16) : at::Tensor();
      layer.b_lp[i] = on && layer.b[i].defined() ? layer.b[i].to(at::kBFloat16) : at::Tensor();
    }
    bool frozen = true;
    for (const int i : {q, k, v})
      frozen = frozen && !layer.w[i].requires_grad() && !(layer.b[i].defined() && layer.b[i].requires_grad());
    const int biases = int(layer.b[q].defined()) + int(layer.b[k].defined()) + int(layer.b[v].defined());
    layer.w_qkv = layer.b_qkv = at::Tensor();
    if (!frozen || (biases != 0 && biases != 3)) continue;
    const auto dt = on ? at::kBFloat16 : at::kFloat;
    layer.w_qkv = at::cat({layer.w[q], layer.w[k], layer.w[v]}).to(dt);
    if (biases == 3) layer.b_qkv = at::cat({layer.b[q], layer.b[k], layer.b[v]}).to(dt);
  }
}

void ClipVision::save(const std::string& dir) const {
  namespace stdfs = std::filesystem;
  std::error_code ec;
  stdfs::create_directories(dir, ec);
  if (ec) throw RuntimeError("cannot create directory '" + dir + "': " + ec.message());
  io::save_safetensors((stdfs::path(dir) / "model.safetensors").string(), state_dict(),
                       {{"format", "pt"}, {"producer", "lorarecycle"}});
  fs::write_text(stdfs::path(dir) / "config.json", to_config_json(config_));
  fs::write_text(stdfs::path(dir) / "preprocessor_config.json", to_preprocessor_json(config_));
}

int ClipVision::feature_dim() const { return proj_.defined() ? config_.projection_dim : config_.hidden_size; }

c10::Device ClipVision::device() const { return patch_w_.defined() ? patch_w_.device() : c10::Device(at::kCPU); }

void ClipVision::to(const c10::Device& device) {
  auto mv = [&](at::Tensor& t) {
    if (t.defined()) t = t.to(device);
  };
  mv(patch_w_), mv(class_emb_), mv(pos_emb_), mv(pre_ln_w_), mv(pre_ln_b_), mv(post_ln_w_), mv(post_ln_b_), mv(proj_);
  for (Layer& layer : layers_) {
    mv(layer.ln1_w), mv(layer.ln1_b), mv(layer.ln2_w), mv(layer.ln2_b);
    for (int i = 0; i < kNumModules; ++i) mv(layer.w[i]), mv(layer.b[i]);
  }
  refresh_derived_weights();
}

// ---- ClipVision: pixels -------------------------------------------------------------------

void check_image_shape(c10::IntArrayRef nhwc, const ClipVisionConfig& cfg, const std::string& origin,
                       bool warn_resize) {
  if (nhwc.size() != 4) throw InputError(origin + ": images must be [N, H, W, C], got " + shape_str(nhwc));
  const int64_t c = nhwc[3];
  if (c != 1 && c != cfg.num_channels)
    throw InputError(origin + ": images have " + std::to_string(c) + " channels; the model takes " +
                     std::to_string(cfg.num_channels) + " (or 1, repeated)");
  if (nhwc[1] < cfg.patch_size || nhwc[2] < cfg.patch_size)
    throw InputError(origin + ": images of " + std::to_string(nhwc[1]) + "x" + std::to_string(nhwc[2]) +
                     " are smaller than one " + std::to_string(cfg.patch_size) + "x" + std::to_string(cfg.patch_size) +
                     " patch of the model (image_size " + std::to_string(cfg.image_size) + ")");
  const int64_t s = cfg.image_size;
  if (warn_resize && (nhwc[1] != s || nhwc[2] != s) && log::rank() <= 0)
    LOG_WARN("model", origin << ": images of " << nhwc[2] << "x" << nhwc[1] << " px are resized to the model's " << s
                             << "x" << s << " (shorter side, bicubic, centre crop) at every use; importing them at "
                             << s << " px (data_tools/import_folder.py --size " << s << ") does it once");
}

at::Tensor resize_center_crop(const at::Tensor& nchw, int64_t size) {
  const int64_t h = nchw.size(2), w = nchw.size(3);
  if (h == size && w == size) return nchw;
  const double scale = static_cast<double>(size) / static_cast<double>(std::min(h, w));
  const int64_t nh = std::max<int64_t>(size, std::llround(h * scale));
  const int64_t nw = std::max<int64_t>(size, std::llround(w * scale));
  // Shrinking filters with the antialiased kernel, as PIL's bicubic resize does.
  const at::Tensor x = nh < h || nw < w ? at::_upsample_bicubic2d_aa(nchw, {nh, nw}, false)
                                        : at::upsample_bicubic2d(nchw, {nh, nw}, false);
  return x.narrow(2, (nh - size) / 2, size).narrow(3, (nw - size) / 2, size);
}

at::Tensor fit_images(const at::Tensor& images_u8, int64_t size) {
  if (images_u8.size(1) == size && images_u8.size(2) == size) return images_u8;
  // 256 images at a time, so that the float copy of a large set stays small.
  std::vector<at::Tensor> blocks;
  for (int64_t s = 0; s < images_u8.size(0); s += 256) {
    const at::Tensor block = images_u8.slice(0, s, std::min<int64_t>(images_u8.size(0), s + 256));
    const at::Tensor x = block.permute({0, 3, 1, 2}).to(at::kFloat);
    blocks.push_back(resize_center_crop(x, size).round_().clamp_(0.0, 255.0).to(at::kByte).permute({0, 2, 3, 1}));
  }
  return at::cat(blocks).contiguous();
}

namespace {

// preprocess_images' common CPU case in one pass: uint8 [B, H, W, 1 or C] to float [B, C, H, W]
// (one channel repeated), each value (v / 255 - mean) / std in float, the general path's
// operations in its order (the same bits). ATen's strided kernels for the same took ~0.5 ms per 80
// images of 32 px here, a cost of every meta-training step that does not shrink with the tokens.
at::Tensor normalise_u8_nhwc(const at::Tensor& images, const std::vector<float>& mean, const std::vector<float>& std) {
  const at::Tensor in = images.contiguous();
  const int64_t B = in.size(0), HW = in.size(1) * in.size(2), Cin = in.size(3);
  const auto C = static_cast<int64_t>(mean.size());
  at::Tensor out = at::empty({B, C, in.size(1), in.size(2)}, at::kFloat);
  const uint8_t* src = in.data_ptr<uint8_t>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bc = begin; bc < end; ++bc) {
      const int64_t c = bc % C;
      const uint8_t* s = src + (bc / C) * HW * Cin + (Cin == 1 ? 0 : c);
      float* d = dst + bc * HW;
      const float m = mean[c], sd = std[c];
      for (int64_t i = 0; i < HW; ++i) d[i] = (static_cast<float>(s[i * Cin]) / 255.0f - m) / sd;
    }
  });
  return out;
}

}  // namespace

at::Tensor preprocess_images(const at::Tensor& images, const ClipVisionConfig& cfg, const c10::Device& device) {
  check_image_shape(images.sizes(), cfg, "images", false);
  if (images.scalar_type() != at::kByte) throw InputError("images must be uint8");
  const int64_t c = images.size(3);
  std::vector<float> mean(cfg.image_mean.begin(), cfg.image_mean.end());
  std::vector<float> std(cfg.image_std.begin(), cfg.image_std.end());
  mean.resize(cfg.num_channels, mean.back());
  std.resize(cfg.num_channels, std.back());
  if (device.is_cpu() && images.device().is_cpu() && images.size(1) == cfg.image_size &&
      images.size(2) == cfg.image_size)
    return normalise_u8_nhwc(images, mean, std);
  // Host tensors reach a GPU without the host waiting: page-locked images (metatrain's prefetch)
  // asynchronously, the small constants below from page-locked copies.
  const auto to_device = [&](const at::Tensor& t) {
    if (!device.is_cuda() || t.device() == device) return t.to(device);
    return (t.is_pinned() ? t : t.pin_memory()).to(at::TensorOptions().device(device), /*non_blocking=*/true);
  };
  at::Tensor x = to_device(images).permute({0, 3, 1, 2}).to(at::kFloat).div_(255.0);
  if (c == 1 && cfg.num_channels != 1) x = x.expand({-1, cfg.num_channels, -1, -1});
  const int64_t s = cfg.image_size;
  if (x.size(2) != s || x.size(3) != s) x = resize_center_crop(x, s).clamp_(0.0, 1.0);
  const at::Tensor m = to_device(at::tensor(mean, at::kFloat)).view({1, -1, 1, 1});
  const at::Tensor d = to_device(at::tensor(std, at::kFloat)).view({1, -1, 1, 1});
  return ((x - m) / d).contiguous();
}

at::Tensor ClipVision::preprocess(const at::Tensor& images) const {
  return preprocess_images(images, config_, device());
}

std::pair<at::Tensor, at::Tensor> ClipVision::pixel_bounds() const {
  std::vector<float> lo, hi;
  for (int i = 0; i < 3; ++i) {
    lo.push_back(float(-config_.image_mean[i] / config_.image_std[i]));
    hi.push_back(float((1.0 - config_.image_mean[i]) / config_.image_std[i]));
  }
  return {at::tensor(lo, at::kFloat).to(device()), at::tensor(hi, at::kFloat).to(device())};
}

// ---- ClipVision: forward --------------------------------------------------------------------

namespace {
at::ScalarType autocast_dtype(const at::Tensor& t);  // below: the dtype autocast gives t's matmuls
}  // namespace

at::Tensor ClipVision::linear(const at::Tensor& x, int layer, Module m, const Lora* lora) const {
  const int i = static_cast<int>(m);
  const Layer& ly = layers_[layer];
  // The bf16 copies (Precision::kBf16): autocast would cast the frozen weights to the same values
  // on every call.
  const bool lp = ly.w_lp[i].defined() && !ly.w[i].requires_grad();
  if (const Adapter* ad = merge_here(x, layer, m, lora)) {  // the frozen weights in the compute dtype
    const at::Tensor &w = lp ? ly.w_lp[i] : ly.w[i], &b = lp ? ly.b_lp[i] : ly.b[i];
    const at::ScalarType dt = autocast_dtype(w);
    return merged_lora_linear(x, w.to(dt), b.defined() ? b.to(dt) : at::Tensor(), ad->a, ad->b, lora->scale());
  }
  at::Tensor y = lp ? at::linear(x, ly.w_lp[i], ly.b_lp[i]) : at::linear(x, ly.w[i], ly.b[i]);
  return add_lora(std::move(y), x, layer, m, lora);
}

const Adapter* ClipVision::merge_here(const at::Tensor& x, int layer, Module m, const Lora* lora) const {
  if (lora == nullptr) return nullptr;
  const Adapter* ad = lora->find(layer, m);
  const at::Tensor& w = layers_[layer].w[static_cast<int>(m)];
  if (ad == nullptr || !adapter_merging() || !(ad->a.requires_grad() || ad->b.requires_grad()) ||
      !at::GradMode::is_enabled() || w.requires_grad())
    return nullptr;
  return merged_adapter_pays(x.numel() / x.size(-1), w.size(1), w.size(0), ad->a.size(0)) ? ad : nullptr;
}

namespace {

// y + scale * (x A^T) B^T as one autograd node with a hand-written backward, in y's dtype (bf16
// under autocast: A and B are cast here, their gradients returned in their own dtype). Unfused,
// the same delta is about ten nodes (two casts, two linears with their views and transposes, the
// add), whose per-node work does not shrink with the token count (the masked bf16 step: 2-5 %
// faster fused, docs/metatrain.md).
// One adapter's share of a backward through y + scale (x A^T) B^T, in the compute dtype: g [N, out]
// the gradient of y, x [N, in], u = x A^T [N, r] (the forward's), B [out, r]. gu = scale g B (x's
// gradient is gu A), ga = gu^T x, and gb as scale (u^T g)^T: the [r, out] product is the faster
// orientation of that bf16 matmul (bench: 75 vs 124 us). Each only where asked for.
struct LoraGrads {
  at::Tensor gu, ga, gb;
};
LoraGrads lora_backward(const at::Tensor& g, const at::Tensor& x, const at::Tensor& u, const at::Tensor& b,
                        double scale, bool need_gu, bool need_a, bool need_b) {
  LoraGrads r;
  if (need_gu || need_a) r.gu = at::mm(g, b).mul_(scale);  // [N, r]
  if (need_a) r.ga = at::mm(r.gu.t(), x);
  if (need_b) r.gb = at::mm(u.t(), g).mul_(scale).t().contiguous();
  return r;
}

// An adapter merged into its projection (W + scale B A): A's and B's gradients from the delta's
// gradient g^T x (g [rows, out] and x [rows, in] in the compute dtype; A and B in float), scale B^T
// (g^T x) and scale (g^T x) A^T in float, each only where asked for.
LoraGrads merged_lora_backward(const at::Tensor& g, const at::Tensor& x, const at::Tensor& af, const at::Tensor& bf,
                               double scale, bool need_a, bool need_b) {
  LoraGrads r;
  if (!need_a && !need_b) return r;
  const at::Tensor gd = at::mm(g.t(), x).to(at::kFloat);  // [out, in]
  if (need_a) r.ga = at::mm(bf.t(), gd).mul_(scale);
  if (need_b) r.gb = at::mm(gd, af.t()).mul_(scale);
  return r;
}

struct LoraAdd : public torch::autograd::Function<LoraAdd> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& y, const at::Tensor& x,
                            const at::Tensor& a, const at::Tensor& b, double scale) {
    // In y's dtype whatever autocast would pick (the backward runs without autocast).
    const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const at::ScalarType dt = y.scalar_type();
    const int64_t in = x.size(-1), out = y.size(-1);
    const at::Tensor x2 = (x.scalar_type() == dt ? x : x.to(dt)).reshape({-1, in});
    const at::Tensor ac = a.to(dt), bc = b.to(dt);
    const at::Tensor u = at::mm(x2, ac.t());  // [N, r]
    const at::Tensor res = at::addmm(y.reshape({-1, out}), u, bc.t(), 1, scale);
    ctx->save_for_backward({x2, u, ac, bc});  // version-checked: an in-place change throws in the backward
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["x_sizes"] = x.sizes().vec();
    ctx->saved_data["x_type"] = x.scalar_type();
    ctx->saved_data["a_type"] = a.scalar_type();
    ctx->saved_data["b_type"] = b.scalar_type();
    return res.view(y.sizes());
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x2 = saved[0], &u = saved[1], &ac = saved[2], &bc = saved[3];
    const double scale = ctx->saved_data["scale"].toDouble();
    const at::Tensor& g = grads[0];
    const at::Tensor g2 = g.reshape({-1, bc.size(0)}).to(bc.scalar_type());
    at::Tensor gy, gx, ga, gb;
    if (ctx->needs_input_grad(0)) gy = g;
    const bool need_x = ctx->needs_input_grad(1), need_a = ctx->needs_input_grad(2), need_b = ctx->needs_input_grad(3);
    const LoraGrads lg = lora_backward(g2, x2, u, bc, scale, need_x, need_a, need_b);
    if (need_x)
      gx =
          at::mm(lg.gu, ac).view(ctx->saved_data["x_sizes"].toIntVector()).to(ctx->saved_data["x_type"].toScalarType());
    if (need_a) ga = lg.ga.to(ctx->saved_data["a_type"].toScalarType());
    if (need_b) gb = lg.gb.to(ctx->saved_data["b_type"].toScalarType());
    return {gy, gx, ga, gb, at::Tensor()};
  }
};

// x (W + scale B A)^T + bias as one node, W and the bias frozen: the adapter merged into W for the
// call (one [out, in] product in float, cast to w's dtype), so the forward is one product and x's
// gradient another through the merged weights; A's and B's gradients come from the delta's, g^T x
// [out, in], as scale B^T (g^T x) and scale (g^T x) A^T (merged_adapter_pays says when this costs
// less than lora_add's separate products).
struct MergedLinear : public torch::autograd::Function<MergedLinear> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w,
                            const OptTensor& bias, const at::Tensor& a, const at::Tensor& b, double scale) {
    const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const at::ScalarType dt = w.scalar_type();
    const int64_t in = x.size(-1), out = w.size(0);
    const at::Tensor x2 = (x.scalar_type() == dt ? x : x.to(dt)).reshape({-1, in});
    const at::Tensor af = a.to(at::kFloat), bf = b.to(at::kFloat);
    const at::Tensor w_eff = w.to(at::kFloat, /*non_blocking=*/false, /*copy=*/true).addmm_(bf, af, 1, scale).to(dt);
    const at::Tensor y = bias.has_value() ? at::addmm(bias->to(dt), x2, w_eff.t()) : at::mm(x2, w_eff.t());
    ctx->save_for_backward({x2, w_eff, af, bf});
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["x_sizes"] = x.sizes().vec();
    ctx->saved_data["x_type"] = x.scalar_type();
    ctx->saved_data["a_type"] = a.scalar_type();
    ctx->saved_data["b_type"] = b.scalar_type();
    ctx->saved_data["has_bias"] = bias.has_value();  // an absent bias is no input edge: A's index is 2
    std::vector<int64_t> sizes = x.sizes().vec();
    sizes.back() = out;
    return y.view(sizes);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    if (at::GradMode::is_enabled())
      throw RuntimeError("merged adapter: second derivatives are not implemented (backward with create_graph)");
    const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x2 = saved[0], &w_eff = saved[1], &af = saved[2], &bf = saved[3];
    const double scale = ctx->saved_data["scale"].toDouble();
    const at::Tensor g = grads[0].reshape({-1, w_eff.size(0)}).to(w_eff.scalar_type());
    at::Tensor gx, ga, gb;
    if (ctx->needs_input_grad(0))
      gx = at::mm(g, w_eff).view(ctx->saved_data["x_sizes"].toIntVector()).to(ctx->saved_data["x_type"].toScalarType());
    const size_t ia = ctx->saved_data["has_bias"].toBool() ? 3 : 2;
    const bool need_a = ctx->needs_input_grad(ia), need_b = ctx->needs_input_grad(ia + 1);
    const LoraGrads lg = merged_lora_backward(g, x2, af, bf, scale, need_a, need_b);
    if (need_a) ga = lg.ga.to(ctx->saved_data["a_type"].toScalarType());
    if (need_b) gb = lg.gb.to(ctx->saved_data["b_type"].toScalarType());
    return {gx, at::Tensor(), at::Tensor(), ga, gb, at::Tensor()};
  }
};

}  // namespace

at::Tensor lora_add(const at::Tensor& y, const at::Tensor& x, const at::Tensor& a, const at::Tensor& b, double scale) {
  return LoraAdd::apply(y, x, a, b, scale);
}

at::Tensor merged_lora_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, const at::Tensor& a,
                              const at::Tensor& b, double scale) {
  if (x.dim() < 1 || w.dim() != 2 || x.size(-1) != w.size(1) || a.dim() != 2 || b.dim() != 2 ||
      a.size(1) != w.size(1) || b.size(0) != w.size(0) || a.size(0) != b.size(1) ||
      (bias.defined() && bias.numel() != w.size(0)))
    throw InputError("merged_lora_linear: need x [.., in], w [out, in], a [r, in], b [out, r], bias [out]; got x " +
                     shape_str(x.sizes()) + ", w " + shape_str(w.sizes()) + ", a " + shape_str(a.sizes()) + ", b " +
                     shape_str(b.sizes()));
  return MergedLinear::apply(x, w, bias.defined() ? OptTensor(bias) : OptTensor(), a, b, scale);
}

bool merged_adapter_pays(int64_t n, int64_t in, int64_t out, int64_t r) {
  return n * (3 * r * (in + out) - in * out) > 3 * in * out * r;
}

namespace {
std::atomic<bool> g_merge_adapters{[] {
  const char* e = std::getenv("LORAREC_UNMERGED_LORA");
  return !(e != nullptr && std::string(e) == "1");
}()};
}  // namespace

void set_adapter_merging(bool on) { g_merge_adapters = on; }
bool adapter_merging() { return g_merge_adapters; }

namespace {

// env::kAtenKernels: which of the CPU kernels benchmarks have switched off ("gelu", "softmax",
// "layer_norm", "bmm", "1" for all), read once.
bool aten_instead(const char* which) {
  static const std::string v = [] {
    const char* e = env::get(env::kAtenKernels);
    return std::string(e != nullptr ? e : "");
  }();
  return v == "1" || v == which;
}

bool kernel_dtype(const at::Tensor& x) {
  return x.device().is_cpu() && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16);
}

// Whether the one-pass CPU kernels (model/cpu_kernels.h) take x; else ATen ops (CUDA, fp16,
// double) compute the same formulas inside the node.
bool fused_gelu(const at::Tensor& x) { return kernel_dtype(x) && !aten_instead("gelu"); }

// Whether the row kernels take x (their generic build is slower than ATen's softmax).
bool fused_softmax(const at::Tensor& x) {
  return kernel_dtype(x) && !aten_instead("softmax") && kernel::best_isa() != kernel::Isa::kGeneric && x.dim() >= 1 &&
         x.size(-1) > 0;
}

// Runs f(first row, row count) over `rows` rows of n values in chunks of about 2^15 values on
// ATen's intra-op threads (one thread per rank in the launch scripts: one chunk).
template <typename F>
void over_rows(int64_t rows, int64_t n, F&& f) {
  at::parallel_for(0, rows, std::max<int64_t>(1, (1 << 15) / n),
                   [&](int64_t begin, int64_t end) { f(begin, end - begin); });
}

template <typename T>
T* raw(const at::Tensor& t) {  // float, or bf16 as its 16 bits
  if constexpr (std::is_same_v<T, float>)
    return t.data_ptr<float>();
  else
    return reinterpret_cast<uint16_t*>(t.data_ptr<at::BFloat16>());
}

// Runs kernel(inputs' pointers at row r ..., out's pointer at row r, row count) over the rows of n
// values (n = 1: element-wise) of contiguous tensors, in float or bf16 by out's dtype.
template <typename K, typename... In>
void run_kernel(int64_t n, const K& kernel, const at::Tensor& out, const In&... in) {
  const auto go = [&](auto tag) {
    using T = decltype(tag);
    T* o = raw<T>(out);
    over_rows(out.numel() / n, n,
              [&](int64_t r, int64_t k) { kernel(static_cast<const T*>(raw<T>(in) + r * n)..., o + r * n, k); });
  };
  if (out.scalar_type() == at::kFloat)
    go(float());
  else
    go(uint16_t());
}

at::Tensor quick_gelu_values(const at::Tensor& x) {
  if (!fused_gelu(x)) return x * at::sigmoid(1.702 * x);
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty_like(xc, at::MemoryFormat::Contiguous);
  run_kernel(
      1, [](auto... a) { kernel::quick_gelu_forward(a..., kernel::best_isa()); }, y, xc);
  return y;
}

at::Tensor quick_gelu_grad(const at::Tensor& x, const at::Tensor& g) {
  if (!fused_gelu(x)) {
    const at::Tensor s = at::sigmoid(1.702 * x);
    return g * s * (1 + 1.702 * x * (1 - s));
  }
  const at::Tensor xc = x.contiguous(), gc = g.to(x.scalar_type()).contiguous();
  at::Tensor gx = at::empty_like(xc, at::MemoryFormat::Contiguous);
  run_kernel(
      1, [](auto... a) { kernel::quick_gelu_backward(a..., kernel::best_isa()); }, gx, xc, gc);
  return gx;
}

at::Tensor softmax_values(const at::Tensor& x) {
  if (!fused_softmax(x)) return at::softmax(x, -1);
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty_like(xc, at::MemoryFormat::Contiguous);
  const int64_t n = x.size(-1);
  run_kernel(
      n, [n](auto in, auto out, int64_t rows) { kernel::softmax_rows(in, out, rows, n, kernel::best_isa()); }, y, xc);
  return y;
}

at::Tensor softmax_grad(const at::Tensor& y, const at::Tensor& g) {
  if (!fused_softmax(y)) return at::_softmax_backward_data(g.to(y.scalar_type()), y, -1, y.scalar_type());
  const at::Tensor gc = g.to(y.scalar_type()).contiguous();
  at::Tensor gx = at::empty_like(y, at::MemoryFormat::Contiguous);
  const int64_t n = y.size(-1);
  run_kernel(
      n,
      [n](auto yi, auto gi, auto out, int64_t rows) {
        kernel::softmax_rows_backward(yi, gi, out, rows, n, kernel::best_isa());
      },
      gx, y, gc);
  return gx;
}

// One autograd node over Op's values and gradient: Op::values_for_grad gives the output and what
// the backward needs (softmax: its output; QuickGELU: its input, or its derivative). The kernels' result carries no
// graph, so a second derivative (backward with create_graph) is refused instead of treating the gradient as a constant.
template <typename Op>
struct KernelNode : public torch::autograd::Function<KernelNode<Op>> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x) {
    const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    auto [y, saved] = Op::values_for_grad(x);
    ctx->save_for_backward({saved});
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    if (at::GradMode::is_enabled())
      throw RuntimeError(std::string(Op::kName) +
                         ": second derivatives are not implemented (backward with create_graph)");
    const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    return {Op::grad(ctx->get_saved_variables()[0], grads[0])};
  }
};

// Without a gradient to track, the values alone (no node).
template <typename Op>
at::Tensor apply_kernel_node(const at::Tensor& x) {
  if (!x.requires_grad() || !at::GradMode::is_enabled()) {
    const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    return Op::values(x);
  }
  return KernelNode<Op>::apply(x);
}

// x * sigmoid(1.702 x). Unfused: three forward ops and five backward ones, a quarter of the bf16
// CPU step on the main job's shapes (docs/metatrain.md). It saves x (the backward recomputes the
// sigmoid), except in bf16 under AVX-512: there the forward also writes the derivative, saved
// instead of x, so that the backward is one multiplication (the recomputing backward kernel was 7 %
// of the dense bf16 step's samples, twice the forward's).
struct QuickGeluOp {
  static constexpr const char* kName = "quick_gelu";
  static bool saves_derivative(const at::Tensor& t) {
    return t.device().is_cpu() && t.scalar_type() == at::kBFloat16 && !aten_instead("gelu") &&
           kernel::quick_gelu_with_grad_supported(kernel::best_isa());
  }
  static at::Tensor values(const at::Tensor& x) { return quick_gelu_values(x); }
  static std::pair<at::Tensor, at::Tensor> values_for_grad(const at::Tensor& x) {
    if (!saves_derivative(x)) return {values(x), x};
    const at::Tensor xc = x.contiguous();
    at::Tensor y = at::empty_like(xc, at::MemoryFormat::Contiguous), d = at::empty_like(y);
    const uint16_t* xp = raw<uint16_t>(xc);
    uint16_t *yp = raw<uint16_t>(y), *dp = raw<uint16_t>(d);
    over_rows(xc.numel(), 1, [&](int64_t r, int64_t k) {
      kernel::quick_gelu_forward_with_grad(xp + r, yp + r, dp + r, k, kernel::best_isa());
    });
    return {y, d};
  }
  // saved: x, or the derivative where saves_derivative (decided by the dtype both share).
  static at::Tensor grad(const at::Tensor& saved, const at::Tensor& g) {
    return saves_derivative(saved) ? at::mul(g.to(saved.scalar_type()), saved) : quick_gelu_grad(saved, g);
  }
};

// softmax over the last dimension, saving its output (contiguous).
struct SoftmaxOp {
  static constexpr const char* kName = "softmax_last_dim";
  static at::Tensor values(const at::Tensor& x) { return softmax_values(x); }
  static std::pair<at::Tensor, at::Tensor> values_for_grad(const at::Tensor& x) {
    at::Tensor y = values(x);
    return {y, y};
  }
  static at::Tensor grad(const at::Tensor& y, const at::Tensor& g) { return softmax_grad(y, g); }
};

}  // namespace

at::Tensor quick_gelu(const at::Tensor& x) { return apply_kernel_node<QuickGeluOp>(x); }

// ---- LayerNorm ------------------------------------------------------------------------------

namespace {

// Whether layer_norm_as's kernels take x: float on the CPU (AVX2 or AVX-512), float weights that
// get no gradient (the frozen VFM; pretraining's LayerNorms learn, and run ATen's).
bool fused_layer_norm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  const auto frozen_float = [](const at::Tensor& t) {
    return t.defined() && t.scalar_type() == at::kFloat && t.device() == c10::Device(at::kCPU) && t.dim() == 1 &&
           !(t.requires_grad() && at::GradMode::is_enabled());
  };
  return x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() >= 1 && x.size(-1) > 0 && frozen_float(w) &&
         frozen_float(b) && w.numel() == x.size(-1) && b.numel() == x.size(-1) && !aten_instead("layer_norm") &&
         kernel::best_isa() != kernel::Isa::kGeneric;
}

// The kernel's values of x's rows into y (float or bf16) and the rows' mean and rstd.
void layer_norm_values(const at::Tensor& xc, const at::Tensor& w, const at::Tensor& b, double eps, const at::Tensor& y,
                       const at::Tensor& mean, const at::Tensor& rstd) {
  const int64_t n = xc.size(-1);
  const float *x = xc.data_ptr<float>(), *wp = w.data_ptr<float>(), *bp = b.data_ptr<float>();
  float *m = mean.data_ptr<float>(), *r = rstd.data_ptr<float>();
  const auto go = [&](auto tag) {
    using T = decltype(tag);
    T* out = raw<T>(y);
    over_rows(mean.numel(), n, [&](int64_t row, int64_t k) {
      kernel::layer_norm_rows(x + row * n, wp, bp, out + row * n, m + row, r + row, k, n, static_cast<float>(eps),
                              kernel::best_isa());
    });
  };
  if (y.scalar_type() == at::kFloat)
    go(float());
  else
    go(uint16_t());
}

// The input gradient of a LayerNorm (of saved float x with weight w and the rows' mean and rstd)
// from its output's gradient gh (float or bf16), plus gx_out where defined (the gradient that
// reaches x from elsewhere); also rounded to bf16 into gx16 where defined. One kernel pass.
at::Tensor layer_norm_input_grad(const at::Tensor& x, const at::Tensor& w, const at::Tensor& mean,
                                 const at::Tensor& rstd, const at::Tensor& gh, const at::Tensor& gx_out,
                                 const at::Tensor& gx16) {
  const at::Tensor g = (gh.scalar_type() == at::kBFloat16 ? gh : gh.to(at::kFloat)).contiguous();
  const at::Tensor add = gx_out.defined() ? gx_out.to(at::kFloat).contiguous() : at::Tensor();
  const at::Tensor gx = at::empty_like(x, at::MemoryFormat::Contiguous);
  const int64_t n = x.size(-1);
  const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>(), *m = mean.data_ptr<float>();
  const float *r = rstd.data_ptr<float>(), *ap = add.defined() ? add.data_ptr<float>() : nullptr;
  float* out = gx.data_ptr<float>();
  uint16_t* out16 = gx16.defined() ? raw<uint16_t>(gx16) : nullptr;
  const auto go = [&](auto tag) {
    using T = decltype(tag);
    const T* gp = raw<T>(g);
    over_rows(mean.numel(), n, [&](int64_t row, int64_t k) {
      kernel::add_layer_norm_rows_backward(xp + row * n, m + row, r + row, wp, gp + row * n,
                                           ap == nullptr ? nullptr : ap + row * n, out + row * n,
                                           out16 == nullptr ? nullptr : out16 + row * n, k, n, kernel::best_isa());
    });
  };
  if (g.scalar_type() == at::kFloat)
    go(float());
  else
    go(uint16_t());
  return gx;
}

// LayerNorm as one node that saves x (float), w and the rows' mean and rstd; the backward gives
// x's gradient in float from a float or bf16 output gradient.
struct LayerNormNode : public torch::autograd::Function<LayerNormNode> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, const at::Tensor& w,
                            const at::Tensor& b, double eps, int64_t out_type) {
    const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const at::Tensor xc = x.contiguous(), wc = w.contiguous(), bc = b.contiguous();
    const int64_t rows = xc.numel() / xc.size(-1);
    const at::Tensor y = at::empty(x.sizes(), x.options().dtype(static_cast<at::ScalarType>(out_type)));
    const at::Tensor mean = at::empty({rows}, x.options()), rstd = at::empty({rows}, x.options());
    layer_norm_values(xc, wc, bc, eps, y, mean, rstd);
    ctx->save_for_backward({xc, wc, mean, rstd});
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    if (at::GradMode::is_enabled())
      throw RuntimeError("layer_norm_as: second derivatives are not implemented (backward with create_graph)");
    const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &w = saved[1], &mean = saved[2], &rstd = saved[3];
    const at::Tensor gx = layer_norm_input_grad(x, w, mean, rstd, grads[0], at::Tensor(), at::Tensor());
    return {gx, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

namespace {

// add_layer_norm_as's node: saves v, w, mean and rstd (and y's dtype).
struct AddLayerNormNode : public torch::autograd::Function<AddLayerNormNode> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                                                const at::Tensor& y, const OptTensor& bias, const at::Tensor& w,
                                                const at::Tensor& b, double eps, int64_t out_type) {
    const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const at::Tensor xc = x.contiguous(), yc = y.contiguous(), wc = w.contiguous(), bc = b.contiguous();
    const at::Tensor biasc = bias.has_value() ? bias->contiguous() : at::Tensor();
    const int64_t n = x.size(-1), rows = xc.numel() / n;
    const at::Tensor v = at::empty(x.sizes(), x.options());
    const at::Tensor h = at::empty(x.sizes(), x.options().dtype(static_cast<at::ScalarType>(out_type)));
    const at::Tensor mean = at::empty({rows}, x.options()), rstd = at::empty({rows}, x.options());
    const float* bp = biasc.defined() ? biasc.data_ptr<float>() : nullptr;
    float *m = mean.data_ptr<float>(), *r = rstd.data_ptr<float>(), *vp = v.data_ptr<float>();
    const float* xp = xc.data_ptr<float>();
    const auto go = [&](auto ytag, auto htag) {
      using Y = decltype(ytag);
      using H = decltype(htag);
      const Y* yp = raw<Y>(yc);
      H* hp = raw<H>(h);
      over_rows(rows, n, [&](int64_t row, int64_t k) {
        kernel::add_layer_norm_rows(xp + row * n, yp + row * n, bp, vp + row * n, wc.data_ptr<float>(),
                                    bc.data_ptr<float>(), hp + row * n, m + row, r + row, k, n, static_cast<float>(eps),
                                    kernel::best_isa());
      });
    };
    const bool y16 = y.scalar_type() == at::kBFloat16, h16 = h.scalar_type() == at::kBFloat16;
    if (y16 && h16)
      go(uint16_t(), uint16_t());
    else if (y16)
      go(uint16_t(), float());
    else if (h16)
      go(float(), uint16_t());
    else
      go(float(), float());
    ctx->save_for_backward({v, wc, mean, rstd});
    ctx->saved_data["y_type"] = y.scalar_type();
    return {v, h};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    if (at::GradMode::is_enabled())
      throw RuntimeError("add_layer_norm_as: second derivatives are not implemented (backward with create_graph)");
    const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const at::Tensor &v = saved[0], &w = saved[1], &mean = saved[2], &rstd = saved[3];
    const at::Tensor gh = grads[1].defined() ? grads[1] : at::zeros_like(v);
    const at::ScalarType y_type = ctx->saved_data["y_type"].toScalarType();
    // y's gradient is v's: the same tensor for a float y, rounded to bf16 in the same pass for a bf16 y.
    const at::Tensor gy16 = y_type == at::kBFloat16 ? at::empty(v.sizes(), v.options().dtype(y_type)) : at::Tensor();
    const at::Tensor gv = layer_norm_input_grad(v, w, mean, rstd, gh, grads[0], gy16);
    const at::Tensor gy = gy16.defined() ? gy16 : gv;
    return {gv, gy, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

std::pair<at::Tensor, at::Tensor> add_layer_norm_as(const at::Tensor& x, const at::Tensor& y, const at::Tensor& bias,
                                                    const at::Tensor& w, const at::Tensor& b, double eps,
                                                    at::ScalarType out) {
  const bool bias_ok =
      !bias.defined() || (bias.scalar_type() == at::kFloat && bias.device().is_cpu() && bias.dim() == 1 &&
                          bias.numel() == x.size(-1) && !(bias.requires_grad() && at::GradMode::is_enabled()));
  const bool fused = fused_layer_norm(x, w, b) && bias_ok && y.sizes() == x.sizes() && y.device().is_cpu() &&
                     (y.scalar_type() == at::kFloat || y.scalar_type() == at::kBFloat16) &&
                     (out == at::kFloat || out == at::kBFloat16);
  if (!fused) {
    const at::Tensor v = bias.defined() ? x + y + bias : x + y;
    return {v, layer_norm_as(v, w, b, eps, out)};
  }
  const torch::autograd::variable_list vh = AddLayerNormNode::apply(
      x, y, bias.defined() ? OptTensor(bias) : OptTensor(), w, b, eps, static_cast<int64_t>(out));
  return {vh[0], vh[1]};
}

at::Tensor layer_norm_as(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, double eps,
                         at::ScalarType out) {
  if (!fused_layer_norm(x, w, b) || (out != at::kFloat && out != at::kBFloat16))
    return at::layer_norm(x, {x.size(-1)}, w, b, eps);
  return LayerNormNode::apply(x, w, b, eps, static_cast<int64_t>(out));  // no node where nothing needs a gradient
}

at::Tensor softmax_last_dim(const at::Tensor& x) { return apply_kernel_node<SoftmaxOp>(x); }

// ---- batched products on the CPU -------------------------------------------------------------

namespace {

#ifdef LORAREC_HAVE_CBLAS
// A matrix operand of cblas_sgemm (row major): the matrices of a 3-d tensor t ([N, rows, cols],
// no size 0) as its transpose flag and leading dimension, or false where neither rows nor columns
// are unit-stride.
bool blas_operand(const at::Tensor& t, CBLAS_TRANSPOSE* trans, int64_t* ld) {
  const int64_t rows = t.size(1), cols = t.size(2), rs = t.stride(1), cs = t.stride(2);
  if (cs == 1 && (rows == 1 || rs >= cols)) {
    *trans = CblasNoTrans;
    *ld = std::max(rs, cols);
    return true;
  }
  if (rs == 1 && (cols == 1 || cs >= rows)) {
    *trans = CblasTrans;
    *ld = std::max(cs, rows);
    return true;
  }
  return false;
}
#endif

}  // namespace

bool blas_bmm_available() {
#ifdef LORAREC_HAVE_CBLAS
  return true;
#else
  return false;
#endif
}

at::Tensor bmm_nograd(const at::Tensor& a, const at::Tensor& b) {
#ifdef LORAREC_HAVE_CBLAS
  const bool ok = a.dim() == 3 && b.dim() == 3 && a.size(0) == b.size(0) && a.size(2) == b.size(1) && a.is_cpu() &&
                  b.is_cpu() && a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat && !aten_instead("bmm");
  if (ok) {
    const int64_t N = a.size(0), m = a.size(1), k = a.size(2), n = b.size(2);
    CBLAS_TRANSPOSE ta = CblasNoTrans, tb = CblasNoTrans;
    int64_t lda = 0, ldb = 0;
    // ATen computes products of fewer than 400 multiply-adds (empty ones included) with its own
    // loops, without an op per matrix; those stay with it (and its summation order, which the
    // tests' small ViTs compare).
    const bool small = m * n * k < 400;
    const bool strided = N > 0 && !small && blas_operand(a, &ta, &lda) && blas_operand(b, &tb, &ldb);
    const int64_t limit = std::numeric_limits<int>::max();
    if (strided && std::max({m, n, k, lda, ldb}) < limit) {
      at::Tensor out = at::empty({N, m, n}, a.options());
      const float *pa = a.data_ptr<float>(), *pb = b.data_ptr<float>();
      float* pc = out.data_ptr<float>();
      const int64_t sa = a.stride(0), sb = b.stride(0);
      // Enough matrices per task that a thread's share is worth its start.
      const int64_t grain = std::max<int64_t>(1, 32768 / (m * n * k));
      at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i)
          cblas_sgemm(CblasRowMajor, ta, tb, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), 1.0f,
                      pa + i * sa, static_cast<int>(lda), pb + i * sb, static_cast<int>(ldb), 0.0f, pc + i * m * n,
                      static_cast<int>(n));
      });
      return out;
    }
  }
#endif
  return at::bmm(a, b);
}

// ---- the attention block as one autograd node ------------------------------------------------

namespace {

// The dtype autocast gives a matmul of float32 `t` where it is on for t's device, else t's own.
at::ScalarType autocast_dtype(const at::Tensor& t) {
  if (t.scalar_type() != at::kFloat) return t.scalar_type();
#ifdef LORAREC_AUTOCAST_BY_DEVICE
  const c10::DeviceType type = t.device().type();
  if (at::autocast::is_autocast_enabled(type)) return at::autocast::get_autocast_dtype(type);
#else
  if (t.is_cuda() && at::autocast::is_enabled()) return at::autocast::get_autocast_gpu_dtype();
  if (t.is_cpu() && at::autocast::is_cpu_enabled()) return at::autocast::get_autocast_cpu_dtype();
#endif
  return t.scalar_type();
}

// Rows [B n, H dh] (any row stride) -> [B H, n, dh], contiguous.
at::Tensor split_heads(const at::Tensor& rows, int64_t B, int64_t n, int64_t H) {
  return rows.view({B, n, H, -1}).transpose(1, 2).reshape({B * H, n, -1});
}

// [B H, n, dh] written into rows [B n, H dh] (e.g. a column block of a wider matrix).
void merge_heads_into(const at::Tensor& rows, const at::Tensor& t, int64_t B, int64_t n, int64_t H) {
  rows.view({B, n, H, -1}).copy_(t.view({B, H, n, -1}).transpose(1, 2));
}

// rows [B T, H dh] (e.g. a column block of a wider matrix) = a^T c per head for one query token:
// a [B H, 1, T] and c [B H, 1, dh], rows[b T + t, h dh + d] = a[b H + h, 0, t] c[b H + h, 0, d].
// What bmm(a^T, c) and merge_heads_into give, one multiplication per value with the same bits,
// without a product of contraction 1 per head and its copy (2.3 ms of a dense bf16 step's last
// layer here, the largest part of that layer's backward).
void outer_heads_into(const at::Tensor& rows, const at::Tensor& a, const at::Tensor& c, int64_t B, int64_t T,
                      int64_t H) {
  at::Tensor out = rows.view({B, T, H, -1});
  at::mul_out(out, a.view({B, H, T}).permute({0, 2, 1}).unsqueeze(-1), c.view({B, H, -1}).unsqueeze(1));
}

// Whether attention_block merges an adapter of rank r into the projection's weights (W + scale B A,
// one product per call) instead of two products of its own (x A^T, then B): from r > D / 6 the
// merged form costs fewer operations with gradients (the delta's gradient g^T x, N D^2, against
// u, its two weight gradients and x's share, 6 N D r), and the forward is the frozen projection's.
// Below that, adapters stay separate (the zoo's rank-4 LoRAs: the same bits as before). This is
// merged_adapter_pays's rule for in = out = d as the rows grow; attention_block keeps its own
// (whatever the rows, and with or without gradients) so that its products keep their bits.
bool merged_adapter(int64_t r, int64_t d) { return 6 * r > d; }

// attention_block's node. Arguments after h: A and B of the adapters on q, k and v (absent where
// there is none). Saved: the projections' input x, the scaled queries, the keys and values split
// by heads, the attention probabilities, the projection's weights (with the merged adapters'
// deltas), then per adapter u = x A^T, A and B in the compute dtype (merged: no u, A and B in float).
struct AttentionNode : public torch::autograd::Function<AttentionNode> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& h, const OptTensor& aq,
                            const OptTensor& bq, const OptTensor& ak, const OptTensor& bk, const OptTensor& av,
                            const OptTensor& bv, const at::Tensor& w_qkv, const OptTensor& b_qkv, int64_t heads,
                            int64_t tq, double lora_scale) {
    const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const at::ScalarType dt = w_qkv.scalar_type();
    const int64_t B = h.size(0), T = h.size(1), D = h.size(2), H = heads;
    const bool all = tq == T;
    const int64_t from = all ? 0 : D;  // w_qkv's first row multiplied with every token
    const at::Tensor x = (h.scalar_type() == dt ? h : h.to(dt)).contiguous().view({B * T, D});
    const at::Tensor xq = all ? x : x.view({B, T, D}).select(1, 0);  // the query tokens
    const std::array<const OptTensor*, 6> ab{&aq, &bq, &ak, &bk, &av, &bv};
    // Adapters of rank r > D / 6 are merged into the projection's weights (merged_adapter), in float
    // (w_qkv copied once), then cast to the compute dtype.
    std::vector<int64_t> merged(3, 0);
    at::Tensor w_eff = w_qkv;
    for (int m = 0; m < 3; ++m) {
      const OptTensor &a = *ab[2 * m], &b = *ab[2 * m + 1];
      if (!a.has_value() || !merged_adapter(a->size(0), D)) continue;
      if (w_eff.is_same(w_qkv)) w_eff = w_qkv.to(at::kFloat, /*non_blocking=*/false, /*copy=*/true);
      w_eff.narrow(0, m * D, D).addmm_(b->to(at::kFloat), a->to(at::kFloat), 1, lora_scale);
      merged[m] = 1;
    }
    w_eff = w_eff.to(dt);
    const auto project = [&](const at::Tensor& in, int64_t row, int64_t n) {
      const at::Tensor w = w_eff.narrow(0, row, n);
      return b_qkv.has_value() ? at::addmm(b_qkv->narrow(0, row, n), in, w.t()) : at::mm(in, w.t());
    };
    const at::Tensor y = project(x, from, 3 * D - from);                // [B T, 3D or 2D]
    const at::Tensor yq = all ? y.narrow(1, 0, D) : project(xq, 0, D);  // [B Tq, D]
    std::vector<at::Tensor> lora_saved;
    std::vector<int64_t> edges(6, -1), types(6, 0);  // autograd edge (h is 0) and dtype per A, B
    for (int m = 0, edge = 1; m < 3; ++m) {
      const OptTensor &a = *ab[2 * m], &b = *ab[2 * m + 1];
      if (!a.has_value()) continue;
      edges[2 * m] = edge++;
      edges[2 * m + 1] = edge++;
      types[2 * m] = static_cast<int64_t>(a->scalar_type());
      types[2 * m + 1] = static_cast<int64_t>(b->scalar_type());
      if (merged[m]) {  // A and B in float for their gradients; no u
        lora_saved.insert(lora_saved.end(), {at::Tensor(), a->to(at::kFloat), b->to(at::kFloat)});
        continue;
      }
      const at::Tensor ac = a->to(dt), bc = b->to(dt);
      const at::Tensor u = at::mm(m == 0 ? xq : x, ac.t());  // [rows, r]
      (m == 0 ? yq : y.narrow(1, m * D - from, D)).add_(at::mm(u, bc.t()), lora_scale);
      lora_saved.insert(lora_saved.end(), {u, ac, bc});
    }
    // HF CLIPAttention: q scaled after the projection, softmax over the keys.
    const at::Tensor qs = split_heads(yq, B, tq, H).mul_(1.0 / std::sqrt(double(D / H)));  // [B H, Tq, dh]
    const at::Tensor kh = split_heads(y.narrow(1, D - from, D), B, T, H);
    const at::Tensor vh = split_heads(y.narrow(1, 2 * D - from, D), B, T, H);
    const at::Tensor p = softmax_values(bmm_nograd(qs, kh.transpose(1, 2)));  // [B H, Tq, T]
    const at::Tensor o = at::empty({B * tq, D}, y.options());
    merge_heads_into(o, bmm_nograd(p, vh), B, tq, H);
    std::vector<at::Tensor> saved{x, qs, kh, vh, p, w_eff};  // the weights the input's gradient goes through
    saved.insert(saved.end(), lora_saved.begin(), lora_saved.end());
    ctx->save_for_backward(saved);
    ctx->saved_data["shape"] = std::vector<int64_t>{B, T, tq, D, H};
    ctx->saved_data["merged"] = merged;
    ctx->saved_data["edges"] = edges;
    ctx->saved_data["types"] = types;
    ctx->saved_data["h_type"] = h.scalar_type();
    ctx->saved_data["lora_scale"] = lora_scale;
    return o.view({B, tq, D});
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    if (at::GradMode::is_enabled())
      throw RuntimeError("attention_block: second derivatives are not implemented (backward with create_graph)");
    const c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    const torch::autograd::variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &qs = saved[1], &kh = saved[2], &vh = saved[3], &p = saved[4], &w_qkv = saved[5];
    const std::vector<int64_t> shape = ctx->saved_data["shape"].toIntVector();
    const std::vector<int64_t> edges = ctx->saved_data["edges"].toIntVector();
    const std::vector<int64_t> merged = ctx->saved_data["merged"].toIntVector();
    const std::vector<int64_t> types = ctx->saved_data["types"].toIntVector();
    const int64_t B = shape[0], T = shape[1], tq = shape[2], D = shape[3], H = shape[4];
    const bool all = tq == T;
    const int64_t from = all ? 0 : D;
    const double lora_scale = ctx->saved_data["lora_scale"].toDouble();
    // Through o = p v and p = softmax(qs k^T): the gradients of q (unscaled), k and v by heads.
    const at::Tensor go = split_heads(grads[0].to(qs.scalar_type()).contiguous().view({B * tq, D}), B, tq, H);
    const at::Tensor gs = softmax_grad(p, bmm_nograd(go, vh.transpose(1, 2)));  // [B H, Tq, T]
    const at::Tensor gy = at::empty({B * T, 3 * D - from}, qs.options());
    const at::Tensor gyq = all ? gy.narrow(1, 0, D) : at::empty({B, D}, qs.options());
    merge_heads_into(gyq, bmm_nograd(gs, kh).mul_(1.0 / std::sqrt(double(D / H))), B, tq, H);
    if (tq == 1) {  // the CLS query alone: k's and v's gradients are outer products
      outer_heads_into(gy.narrow(1, D - from, D), gs, qs, B, T, H);
      outer_heads_into(gy.narrow(1, 2 * D - from, D), p, go, B, T, H);
    } else {
      merge_heads_into(gy.narrow(1, D - from, D), bmm_nograd(gs.transpose(1, 2), qs), B, T, H);
      merge_heads_into(gy.narrow(1, 2 * D - from, D), bmm_nograd(p.transpose(1, 2), go), B, T, H);
    }
    // Through the projections: the input's gradient, and the adapters'.
    const bool need_h = ctx->needs_input_grad(0);
    at::Tensor gx;
    if (need_h) {
      gx = at::mm(gy, w_qkv.narrow(0, from, 3 * D - from));  // [B T, D]
      if (!all) gx.view({B, T, D}).select(1, 0).add_(at::mm(gyq, w_qkv.narrow(0, 0, D)));
    }
    const at::Tensor gxq = !need_h ? at::Tensor() : all ? gx : gx.view({B, T, D}).select(1, 0);
    const at::Tensor xq = all ? x : x.view({B, T, D}).select(1, 0);  // the query tokens
    torch::autograd::variable_list out(12);
    for (int m = 0, next = 6; m < 3; ++m) {
      if (edges[2 * m] < 0) continue;
      const at::Tensor &u = saved[next], &ac = saved[next + 1], &bc = saved[next + 2];
      next += 3;
      const at::Tensor g = m == 0 ? gyq : gy.narrow(1, m * D - from, D);  // [rows, D]
      const bool need_a = ctx->needs_input_grad(edges[2 * m]), need_b = ctx->needs_input_grad(edges[2 * m + 1]);
      if (merged[m]) {  // from the delta's gradient g^T x [D, D]
        const LoraGrads lg = merged_lora_backward(g, m == 0 ? xq : x, ac, bc, lora_scale, need_a, need_b);
        if (need_a) out[1 + 2 * m] = lg.ga.to(static_cast<at::ScalarType>(types[2 * m]));
        if (need_b) out[2 + 2 * m] = lg.gb.to(static_cast<at::ScalarType>(types[2 * m + 1]));
        continue;
      }
      const LoraGrads lg = lora_backward(g, m == 0 ? xq : x, u, bc, lora_scale, need_h, need_a, need_b);
      if (need_a) out[1 + 2 * m] = lg.ga.to(static_cast<at::ScalarType>(types[2 * m]));
      if (need_b) out[2 + 2 * m] = lg.gb.to(static_cast<at::ScalarType>(types[2 * m + 1]));
      if (need_h) (m == 0 ? gxq : gx).addmm_(lg.gu, ac);
    }
    if (need_h) out[0] = gx.view({B, T, D}).to(ctx->saved_data["h_type"].toScalarType());
    return out;
  }
};

}  // namespace

at::Tensor attention_block(const at::Tensor& h, const at::Tensor& w_qkv, const at::Tensor& b_qkv,
                           const std::array<const Adapter*, 3>& adapters, int64_t heads, int64_t tq,
                           double lora_scale) {
  if (h.dim() != 3 || heads < 1 || h.size(2) % heads != 0 || w_qkv.dim() != 2 || w_qkv.size(0) != 3 * h.size(2) ||
      w_qkv.size(1) != h.size(2) || (b_qkv.defined() && b_qkv.numel() != w_qkv.size(0)) ||
      !(tq == h.size(1) || tq == 1))
    throw InputError("attention_block: h must be [B, T, D] with D a multiple of the " + std::to_string(heads) +
                     " heads, w_qkv [3D, D], b_qkv [3D] and Tq T or 1; got h " + shape_str(h.sizes()) + ", w_qkv " +
                     shape_str(w_qkv.sizes()) + ", Tq " + std::to_string(tq));
  const auto part = [&](int m, bool b) {
    const Adapter* ad = adapters[m];
    return ad == nullptr ? OptTensor() : OptTensor(b ? ad->b : ad->a);
  };
  // In the dtype autocast would give the matmuls (float32 weights under bf16 autocast: bf16).
  const at::ScalarType dt = autocast_dtype(w_qkv);
  return AttentionNode::apply(h, part(0, false), part(0, true), part(1, false), part(1, true), part(2, false),
                              part(2, true), w_qkv.to(dt), b_qkv.defined() ? OptTensor(b_qkv.to(dt)) : OptTensor(),
                              heads, tq, lora_scale);
}

at::Tensor ClipVision::add_lora(at::Tensor y, const at::Tensor& x, int layer, Module m, const Lora* lora) const {
  if (lora == nullptr) return y;
  const Adapter* ad = lora->find(layer, m);
  if (ad == nullptr) return y;
  // LORAREC_UNFUSED_LORA=1: the delta as separate ops (bench/perf.sh compares both in one run).
  static const bool unfused = [] {
    const char* e = std::getenv("LORAREC_UNFUSED_LORA");
    return e != nullptr && std::string(e) == "1";
  }();
  return unfused ? at::add(y, at::linear(at::linear(x, ad->a), ad->b), lora->scale())
                 : lora_add(y, x, ad->a, ad->b, lora->scale());
}

std::array<at::Tensor, 3> ClipVision::qkv(const at::Tensor& h, const at::Tensor& hq, int layer,
                                          const Lora* lora) const {
  const Layer& ly = layers_[layer];
  const int64_t B = h.size(0), T = h.size(1), Tq = hq.size(1), D = config_.hidden_size;
  const int64_t H = config_.num_attention_heads, dh = config_.head_dim();
  const auto heads = [&](const at::Tensor& t, int64_t n) { return t.view({B, n, H, dh}).transpose(1, 2); };
  if (!ly.w_qkv.defined())
    return {heads(linear(hq, layer, Module::kQ, lora), Tq), heads(linear(h, layer, Module::kK, lora), T),
            heads(linear(h, layer, Module::kV, lora), T)};
  // Frozen weights: the three projections as one matmul (k and v only, when q is of the CLS row).
  // Under bf16 the input is cast once here rather than by autocast in every matmul.
  const at::Tensor hc = h.scalar_type() == ly.w_qkv.scalar_type() ? h : h.to(ly.w_qkv.scalar_type());
  const bool all = Tq == T;
  const int64_t from = all ? 0 : D;
  const at::Tensor b = ly.b_qkv.defined() ? ly.b_qkv.narrow(0, from, 3 * D - from) : at::Tensor();
  const at::Tensor y = at::linear(hc, ly.w_qkv.narrow(0, from, 3 * D - from), b);  // [B, T, 3D or 2D]
  at::Tensor q;
  if (all) {
    q = add_lora(y.narrow(-1, 0, D), hc, layer, Module::kQ, lora);
  } else {
    const at::Tensor hqc = hq.scalar_type() == hc.scalar_type() ? hq : hq.to(hc.scalar_type());
    q = add_lora(
        at::linear(hqc, ly.w_qkv.narrow(0, 0, D), ly.b_qkv.defined() ? ly.b_qkv.narrow(0, 0, D) : at::Tensor()), hqc,
        layer, Module::kQ, lora);
  }
  const at::Tensor k = add_lora(y.narrow(-1, D - from, D), hc, layer, Module::kK, lora);
  const at::Tensor v = add_lora(y.narrow(-1, 2 * D - from, D), hc, layer, Module::kV, lora);
  return {heads(q, Tq), heads(k, T), heads(v, T)};
}

ForwardOutput ClipVision::forward(const at::Tensor& pixels, const ForwardOptions& opts, const Lora* lora) const {
  if (precision_ == Precision::kFp32) return forward_impl(pixels, opts, lora);
  ForwardOutput out;
  {
    AutocastScope autocast(pixels.device().type(), true);
    out = forward_impl(pixels, opts, lora);
  }
  out.feature = out.feature.to(at::kFloat);
  if (out.patch_scores.defined()) out.patch_scores = out.patch_scores.to(at::kFloat);
  return out;
}

namespace {

// Patches [B, T, C p p] of float pixels [B, C, g p, g p] on the CPU at index [B, T] (int64; all g^2
// in order where undefined), as row copies of p floats: ATen's 6-d strided copy and its advanced
// indexing took 0.3-0.4 ms per 80-image step here for the same values. Without a gradient to the
// pixels only (the inversion's go through ATen's ops).
at::Tensor gather_patches_cpu(const at::Tensor& pixels, const at::Tensor& index, int64_t p) {
  const at::Tensor x = pixels.contiguous();
  const int64_t B = x.size(0), C = x.size(1), S = x.size(2), g = S / p;
  const int64_t T = index.defined() ? index.size(1) : g * g, row = C * p * p;
  const at::Tensor idx = index.defined() ? index.contiguous() : at::Tensor();
  at::Tensor out = at::empty({B, T, row}, x.options());
  const float* src = x.data_ptr<float>();
  const int64_t* ix = idx.defined() ? idx.data_ptr<int64_t>() : nullptr;
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, B * T, 64, [&](int64_t begin, int64_t end) {
    for (int64_t bt = begin; bt < end; ++bt) {
      const int64_t b = bt / T, patch = ix != nullptr ? ix[bt] : bt % T;
      const float* in = src + b * C * S * S + (patch / g) * p * S + (patch % g) * p;
      float* o = dst + bt * row;
      for (int64_t c = 0; c < C; ++c)
        for (int64_t i = 0; i < p; ++i) std::memcpy(o + (c * p + i) * p, in + c * S * S + i * S, p * sizeof(float));
    }
  });
  return out;
}

}  // namespace

// Patch embedding as a matmul over unfolded patches (= the stride-p conv without bias), on the
// kept patches only (patch_index [B, T], or all); position embeddings, the CLS token and the
// pre-LayerNorm. *index: the tokens' original patch indices when patch_index is given or track.
at::Tensor ClipVision::embed_tokens(const at::Tensor& pixels, const at::Tensor& patch_index, bool track,
                                    at::Tensor* index_out) const {
  const ClipVisionConfig& c = config_;
  const int64_t C = c.num_channels, p = c.patch_size, g = c.grid(), P = c.num_patches(), D = c.hidden_size;
  const int64_t B = pixels.size(0);
  at::Tensor& index = *index_out;
  util::PhaseScope gather_phase("patches");
  const at::Tensor grid = pixels.reshape({B, C, g, p, g, p});  // a view of the images
  const bool by_rows =
      pixels.is_cpu() && pixels.scalar_type() == at::kFloat && !(pixels.requires_grad() && at::GradMode::is_enabled());
  at::Tensor patches;
  if (patch_index.defined()) {
    const at::Tensor& pi = patch_index;
    if (pi.dim() != 2 || pi.size(0) != B || pi.size(1) < 1 || pi.size(1) > P)
      throw InputError("patch_index must be [B, T] with 1 <= T <= " + std::to_string(P) + ", got " +
                       shape_str(pi.sizes()));
    index = pi.to(pixels.device(), at::kLong);
    if (index.is_cuda()) {  // checked on the device: no wait for the host in a training step
      at::_assert_async(index.min().ge(0).logical_and(index.max().lt(P)));
    } else if (index.min().item<int64_t>() < 0 || index.max().item<int64_t>() >= P) {
      throw InputError("patch_index holds values outside [0, " + std::to_string(P) + ")");
    }
    // Only the kept patches are read, straight from the images: [B, T] (row, column) indices
    // around the channel and in-patch dimensions give [B, T, C, p, p].
    if (by_rows) {
      patches = gather_patches_cpu(pixels, index, p);
    } else {
      using at::indexing::Slice;
      const at::Tensor rows = at::arange(B, index.options()).unsqueeze(1).expand_as(index);
      patches = grid.index({rows, Slice(), index.div(g, "floor"), Slice(), index.remainder(g), Slice()})
                    .reshape({B, index.size(1), C * p * p});
    }
  } else {
    patches = by_rows ? gather_patches_cpu(pixels, at::Tensor(), p)
                      : grid.permute({0, 2, 4, 1, 3, 5}).reshape({B, P, C * p * p});
    if (track)
      index = at::arange(P, at::TensorOptions().dtype(at::kLong).device(pixels.device())).unsqueeze(0).expand({B, P});
  }
  gather_phase.stop();
  util::PhaseScope embed_phase("embed");
  at::Tensor x = at::matmul(patches, patch_w_.reshape({D, C * p * p}).t());  // [B, T, D]
  if (index.defined())
    x = x + pos_emb_.index_select(0, (index + 1).reshape({-1})).view({B, index.size(1), D});
  else
    x = x + pos_emb_.slice(0, 1).unsqueeze(0);
  const at::Tensor cls = (class_emb_ + pos_emb_[0]).view({1, 1, D}).expand({B, 1, D});
  x = at::cat({cls, x}, 1);
  return layer_norm_as(x, pre_ln_w_, pre_ln_b_, c.layer_norm_eps, at::kFloat);
}

static std::string libtorch_version() {
#if defined(TORCH_VERSION_MAJOR)
  return std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR);
#else
  return "unknown";
#endif
}

bool fused_attention_available() {
#ifdef LORAREC_HAVE_SDPA
  return true;
#else
  return false;
#endif
}

Attention default_attention() {
  if (fused_attention_available()) return Attention::kFused;
  const char* e = env::get(env::kUnfusedAttention);
  return e != nullptr && std::string(e) == "1" ? Attention::kExplicitOps : Attention::kExplicit;
}

void ClipVision::set_attention(Attention a) {
  if (a == Attention::kFused && !fused_attention_available())
    throw InputError("fused attention needs LibTorch >= 2.0 (this build: " + libtorch_version() + ")");
  attention_ = a;
}

at::Tensor ClipVision::attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              at::Tensor* cls_row) const {
  const double scale = 1.0 / std::sqrt(double(q.size(-1)));
#ifdef LORAREC_HAVE_SDPA
  if (attention_ == Attention::kFused) {
    if (cls_row != nullptr)  // the one row pruning needs, beside the fused kernel
      *cls_row = at::softmax(at::matmul(q.narrow(2, 0, 1) * scale, k.transpose(-2, -1)), -1).squeeze(2);
    return at::scaled_dot_product_attention(q, k, v);  // default scale 1 / sqrt(head dim)
  }
#endif
  // HF CLIPAttention: q scaled after projection, softmax over keys.
  const at::Tensor attn = softmax_last_dim(at::matmul(q * scale, k.transpose(-2, -1)));  // [B, H, Tq, T]
  if (cls_row != nullptr) *cls_row = attn.select(2, 0);
  return at::matmul(attn, v);
}

std::pair<at::Tensor, at::Tensor> ClipVision::residual_norm(const at::Tensor& x, const at::Tensor& in, int layer,
                                                            Module m, const Lora* lora, const at::Tensor& ln_w,
                                                            const at::Tensor& ln_b, at::ScalarType out) const {
  const int i = static_cast<int>(m);
  const Layer& ly = layers_[layer];
  if (ly.w[i].requires_grad() || !x.device().is_cpu()) {  // training weights, or a GPU: the separate ops
    const at::Tensor v = x + linear(in, layer, m, lora);
    return {v, layer_norm_as(v, ln_w, ln_b, config_.layer_norm_eps, out)};
  }
  // The matmul without its bias (added in float by the node), in the bf16 copy under kBf16; a
  // trained high-rank adapter merged into it where that costs less (merged_adapter_pays).
  const at::Tensor& w = ly.w_lp[i].defined() ? ly.w_lp[i] : ly.w[i];
  if (const Adapter* ad = merge_here(in, layer, m, lora)) {
    const at::Tensor y = merged_lora_linear(in, w.to(autocast_dtype(w)), at::Tensor(), ad->a, ad->b, lora->scale());
    return add_layer_norm_as(x, y, ly.b[i], ln_w, ln_b, config_.layer_norm_eps, out);
  }
  const at::Tensor y = at::linear(in, w);
  return add_layer_norm_as(x, add_lora(y, in, layer, m, lora), ly.b[i], ln_w, ln_b, config_.layer_norm_eps, out);
}

namespace {

// ForwardOptions::prune by layer, each layer in [0, L) and each ratio in [0, 1).
std::map<int, double> checked_prune(const ForwardOptions& opts, int64_t L) {
  std::map<int, double> prune;
  for (const auto& [l, r] : opts.prune) {
    if (l < 0 || l >= L)
      throw InputError("pruning layer " + std::to_string(l) + " outside [0, " + std::to_string(L) + ")");
    if (!(r >= 0.0 && r < 1.0)) throw InputError("pruning ratio " + std::to_string(r) + " outside [0, 1)");
    prune[l] = r;
  }
  return prune;
}

// The CLS query's head-averaged attention on each patch token ([B, T - 1] of cls_row [B, H, T]):
// kept as the scores where want_last, and where ratio > 0 that share of the patch tokens dropped
// from index and from each of `tokens` ([B, T, D] each; not when they hold the CLS row alone), the
// most attended kept in their order.
void use_cls_row(const at::Tensor& cls_row, double ratio, bool want_last, bool cls_only,
                 std::initializer_list<at::Tensor*> tokens, at::Tensor& index, at::Tensor& last_scores,
                 at::Tensor& last_index) {
  const at::Tensor s = cls_row.slice(-1, 1).mean(1);
  if (want_last) {
    last_scores = s.detach();
    last_index = index;
  }
  const int64_t B = s.size(0), n = s.size(1);
  const auto drop = static_cast<int64_t>(ratio * double(n));
  if (drop > 0 && n - drop >= 1) {
    const at::Tensor keep = std::get<0>(std::get<1>(at::topk(s, n - drop, -1)).sort(-1));  // order kept
    index = at::gather(index, 1, keep);
    if (cls_only) return;
    for (at::Tensor* t : tokens) {
      const at::Tensor rows = keep.unsqueeze(-1).expand({B, n - drop, t->size(2)});
      *t = at::cat({t->slice(1, 0, 1), at::gather(t->slice(1, 1), 1, rows)}, 1);
    }
  }
}

}  // namespace

ForwardOutput ClipVision::forward_impl(const at::Tensor& pixels, const ForwardOptions& opts, const Lora* lora) const {
  const ClipVisionConfig& c = config_;
  const int64_t S = c.image_size, C = c.num_channels, P = c.num_patches();
  const int64_t D = c.hidden_size, L = c.num_hidden_layers;
  if (pixels.dim() != 4 || pixels.size(1) != C || pixels.size(2) != S || pixels.size(3) != S)
    throw InputError("pixels must be [B, " + std::to_string(C) + ", " + std::to_string(S) + ", " + std::to_string(S) +
                     "], got " + shape_str(pixels.sizes()));
  const int64_t B = pixels.size(0);
  const std::map<int, double> prune = checked_prune(opts, L);
  const bool track = opts.patch_index.defined() || !prune.empty() || opts.want_scores;

  at::Tensor index;  // [B, T] int64 original patch indices of the current tokens
  at::Tensor x = embed_tokens(pixels, opts.patch_index, track, &index);
  // Whether layer k's attention runs as attention_block's node. Under autocast the LayerNorms write
  // bf16 where one bf16 matmul takes their output (that node; fc1 without an adapter); where the
  // output has several consumers it stays float, so that their gradients add up in float.
  const auto block = [&](int k) {
    return attention_ == Attention::kExplicit && layers_[k].w_qkv.defined() && prune.count(k) == 0 &&
           !(k == L - 1 && opts.want_scores);
  };
  const auto ln1_type = [&](int k) { return block(k) ? autocast_dtype(x) : at::kFloat; };

  at::Tensor last_scores, last_index;
  at::Tensor h;  // layer l's first LayerNorm, where the residual add before it computed it
  for (int l = 0; l < L; ++l) {
    const Layer& ly = layers_[l];
    const bool last = (l == L - 1);
    const bool cls_only = last && opts.cls_only_last;
    if (opts.layer_inputs != nullptr) opts.layer_inputs->push_back(x);
    util::PhaseScope attention_phase("attention");
    // Attention (HF CLIPAttention: q scaled after projection, softmax over keys).
    const auto pr = prune.find(l);
    const bool want_last = last && opts.want_scores;
    if (!h.defined()) h = layer_norm_as(x, ly.ln1_w, ly.ln1_b, c.layer_norm_eps, ln1_type(l));
    const at::Tensor hq = cls_only ? h.slice(1, 0, 1) : h;
    const int64_t Tq = hq.size(1);
    at::Tensor cls_row;  // [B, H, T] when pruning here or returning the scores
    at::Tensor o;        // [B, Tq, D]
    if (block(l)) {
      const auto find = [&](Module m) { return lora != nullptr ? lora->find(l, m) : nullptr; };
      o = attention_block(h, ly.w_qkv, ly.b_qkv, {find(Module::kQ), find(Module::kK), find(Module::kV)},
                          c.num_attention_heads, Tq, lora != nullptr ? lora->scale() : 1.0);
    } else {
      const auto [q, k, v] = qkv(h, hq, l, lora);
      o = attend(q, k, v, (pr != prune.end() || want_last) ? &cls_row : nullptr).transpose(1, 2).reshape({B, Tq, D});
    }
    // The residual and the MLP's LayerNorm (per token: pruning after it drops the same rows).
    const bool official = opts.official_prune_residual && pr != prune.end();
    const bool fc1_lora = lora != nullptr && lora->find(l, Module::kFc1) != nullptr;
    const at::ScalarType h2_type = !official && !fc1_lora ? autocast_dtype(x) : at::kFloat;
    at::Tensor h2;
    std::tie(x, h2) =
        residual_norm(cls_only ? x.slice(1, 0, 1) : x, o, l, Module::kOut, lora, ly.ln2_w, ly.ln2_b, h2_type);
    if (cls_row.defined())
      use_cls_row(cls_row, pr != prune.end() ? pr->second : 0.0, want_last, cls_only, {&x, &h2}, index, last_scores,
                  last_index);
    attention_phase.stop();
    util::PhaseScope mlp_phase("mlp");
    // MLP; its residual with the next layer's first LayerNorm.
    at::Tensor m = linear(h2, l, Module::kFc1, lora);
    m = c.hidden_act == Activation::kQuickGelu ? quick_gelu(m) : at::gelu(m);
    h = at::Tensor();
    if (official || last) {
      m = linear(m, l, Module::kFc2, lora);
      x = official ? h2 + m : x + m;
    } else {
      const Layer& next = layers_[l + 1];
      std::tie(x, h) = residual_norm(x, m, l, Module::kFc2, lora, next.ln1_w, next.ln1_b, ln1_type(l + 1));
    }
  }
  util::PhaseScope head_phase("head");
  ForwardOutput out;
  at::Tensor pooled = at::layer_norm(x.select(1, 0), {D}, post_ln_w_, post_ln_b_, c.layer_norm_eps);
  out.feature = proj_.defined() ? at::matmul(pooled, proj_.t()) : pooled;
  if (track) out.patch_index = index;
  if (opts.want_scores) {
    const auto fopts = at::TensorOptions().device(pixels.device());
    out.patch_scores = at::zeros({B, P}, fopts.dtype(last_scores.scalar_type())).scatter_(1, last_index, last_scores);
    out.keep_mask =
        at::zeros({B, P}, fopts.dtype(at::kBool)).scatter_(1, index, at::ones(index.sizes(), fopts.dtype(at::kBool)));
  }
  return out;
}

// ---- device and precision -------------------------------------------------------------------

AutocastScope::AutocastScope(c10::DeviceType type, bool enabled) : type_(type), enabled_(enabled) {
  if (!enabled_) return;
#ifdef LORAREC_AUTOCAST_BY_DEVICE
  prev_ = at::autocast::is_autocast_enabled(type_);
  at::autocast::set_autocast_dtype(type_, at::kBFloat16);
  at::autocast::set_autocast_enabled(type_, true);
#else
  if (type_ == c10::DeviceType::CUDA) {
    prev_ = at::autocast::is_enabled();
    at::autocast::set_autocast_gpu_dtype(at::kBFloat16);
    at::autocast::set_enabled(true);
  } else {
    prev_ = at::autocast::is_cpu_enabled();
    at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
    at::autocast::set_cpu_enabled(true);
  }
#endif
}

AutocastScope::~AutocastScope() {
  if (!enabled_) return;
#ifdef LORAREC_AUTOCAST_BY_DEVICE
  at::autocast::set_autocast_enabled(type_, prev_);
#else
  if (type_ == c10::DeviceType::CUDA)
    at::autocast::set_enabled(prev_);
  else
    at::autocast::set_cpu_enabled(prev_);
#endif
  at::autocast::clear_cache();
}

const char* precision_name(Precision p) { return p == Precision::kBf16 ? "bf16" : "fp32"; }

std::string cpu_bf16_features() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("flags", 0) != 0) continue;
    std::istringstream words(line.substr(line.find(':') + 1));
    std::set<std::string> flags;
    for (std::string w; words >> w;) flags.insert(w);
    std::string out;
    for (const char* f : {"avx512_bf16", "amx_bf16"})
      if (flags.count(f)) out += (out.empty() ? "" : "+") + std::string(f);
    return out;
  }
  return "";
}

bool bf16_matmul_accumulates_in_float() {
  static const bool in_float = [] {
    const at::NoGradGuard no_grad;
    // 16 x 512 x 16: above LibTorch 1.13's size threshold for oneDNN (m k n > 16^3), as the model's
    // products are; smaller ones take the emulation, which sums in bf16, even on CPUs with bf16.
    const at::Tensor a = at::ones({16, 512}, at::kBFloat16), b = at::ones({512, 16}, at::kBFloat16);
    return at::mm(a, b).min().item<float>() == 512.0f;
  }();
  return in_float;
}

PrecisionChoice resolve_precision(const std::string& spec, const c10::Device& device) {
  if (spec == "fp32") return {Precision::kFp32, "asked for", ""};
  if (spec == "bf16") {
    if (device.is_cuda() || !cpu_bf16_features().empty()) return {Precision::kBf16, "asked for", ""};
    return {Precision::kBf16, "asked for",
            std::string("this CPU has no avx512_bf16 or amx_bf16: its bf16 matmuls are emulated and slower than fp32") +
                (bf16_matmul_accumulates_in_float() ? "" : ", and LibTorch's emulation sums their products in bf16") +
                " (--precision auto picks fp32 here)"};
  }
  if (spec != "auto") throw InputError("unknown precision '" + spec + "' (expected auto, fp32 or bf16)");
  if (device.is_cuda()) {
    if (at::detail::getCUDAHooks().supportsBFloat16ConvolutionWithCuDNNv8())
      return {Precision::kBf16, "auto: this GPU runs bf16 natively (compute capability >= 8)", ""};
    return {Precision::kFp32, "auto: this GPU has no native bf16 (compute capability < 8)", ""};
  }
  const std::string f = cpu_bf16_features();
  if (!f.empty()) return {Precision::kBf16, "auto: this CPU has " + f, ""};
  return {Precision::kFp32, "auto: this CPU has no avx512_bf16 or amx_bf16", ""};
}

void set_tf32(bool on) {
  at::globalContext().setAllowTF32CuBLAS(on);
  at::globalContext().setAllowTF32CuDNN(on);
}

bool tf32_enabled() { return at::globalContext().allowTF32CuBLAS(); }

c10::Device select_device(const std::string& spec, int local_rank) {
  const bool has_cuda = at::hasCUDA();
  if (spec == "cpu") return c10::Device(at::kCPU);
  if (spec == "auto") {
    if (!has_cuda) return c10::Device(at::kCPU);
    const int n = static_cast<int>(at::getNumGPUs());
    return c10::Device(at::kCUDA, static_cast<c10::DeviceIndex>(local_rank % n));
  }
  if (spec == "cuda" || spec.rfind("cuda:", 0) == 0) {
    if (!has_cuda)
      throw InputError("device '" + spec + "' asked for, but this LibTorch build has no CUDA (or no GPU is visible)");
    if (spec == "cuda") return c10::Device(at::kCUDA, static_cast<c10::DeviceIndex>(local_rank % at::getNumGPUs()));
    return c10::Device(spec);
  }
  throw InputError("unknown device '" + spec + "' (expected auto, cpu, cuda or cuda:N)");
}

}  // namespace lorarec::model
