#include "lorarecycle/model/resnet.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>

#include <cmath>
#include <cstring>
#include <filesystem>

#include "lorarecycle/io/safetensors.h"
#include "lorarecycle/util/error.h"

namespace lorarec::model {
namespace {

std::string block_name(int stage, int j) { return "layer" + std::to_string(stage + 1) + "." + std::to_string(j) + "."; }

// Every tensor name and shape the config implies.
std::map<std::string, std::vector<int64_t>> expected_shapes(const ResNetConfig& c) {
  std::map<std::string, std::vector<int64_t>> s;
  auto add_bn = [&](const std::string& n, int64_t ch) {
    for (const char* f : {"weight", "bias", "running_mean", "running_var"}) s[n + "." + f] = {ch};
    s[n + ".num_batches_tracked"] = {};
  };
  const int64_t k = c.imagenet_stem ? 7 : 3;
  s["conv1.weight"] = {c.width, 3, k, k};
  add_bn("bn1", c.width);
  const int expansion = c.bottleneck ? 4 : 1;
  int64_t in = c.width;
  for (int i = 0; i < 4; ++i) {
    const int64_t planes = int64_t(c.width) << i;
    for (int j = 0; j < c.layers[i]; ++j) {
      const std::string b = block_name(i, j);
      const int stride = (i > 0 && j == 0) ? 2 : 1;
      if (c.bottleneck) {
        s[b + "conv1.weight"] = {planes, in, 1, 1};
        s[b + "conv2.weight"] = {planes, planes, 3, 3};
        s[b + "conv3.weight"] = {planes * 4, planes, 1, 1};
        add_bn(b + "bn1", planes), add_bn(b + "bn2", planes), add_bn(b + "bn3", planes * 4);
      } else {
        s[b + "conv1.weight"] = {planes, in, 3, 3};
        s[b + "conv2.weight"] = {planes, planes, 3, 3};
        add_bn(b + "bn1", planes), add_bn(b + "bn2", planes);
      }
      if (j == 0 && (stride != 1 || in != planes * expansion)) {
        s[b + "downsample.0.weight"] = {planes * expansion, in, 1, 1};
        add_bn(b + "downsample.1", planes * expansion);
      }
      in = planes * expansion;
    }
  }
  s["fc.weight"] = {c.num_classes, in};
  s["fc.bias"] = {c.num_classes};
  return s;
}

bool is_buffer(const std::string& n) {
  return n.size() > 12 &&
         (n.find("running_") != std::string::npos || n.find("num_batches_tracked") != std::string::npos);
}

}  // namespace

ResNet ResNet::random(const ResNetConfig& cfg, std::uint64_t seed) {
  if (cfg.layers.size() != 4 || cfg.width < 1 || cfg.num_classes < 1) throw InputError("ResNet: bad config");
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  ResNet r;
  r.config_ = cfg;
  for (const auto& [name, shape] : expected_shapes(cfg)) {
    at::Tensor t;
    const auto ends = [&](const char* suf) {
      return name.size() >= std::strlen(suf) &&
             name.compare(name.size() - std::strlen(suf), std::strlen(suf), suf) == 0;
    };
    if (ends("num_batches_tracked")) {
      t = at::zeros({}, at::kLong);
    } else if (ends("running_var")) {
      t = at::ones(shape);
    } else if (ends("running_mean") || ends(".bias")) {
      t = at::zeros(shape);
    } else if (name.rfind("fc.", 0) == 0) {
      t = at::empty(shape).uniform_(-1.0 / std::sqrt(double(shape[1])), 1.0 / std::sqrt(double(shape[1])), gen);
    } else if (shape.size() == 4) {  // kaiming normal, fan_out, relu (torchvision)
      const double fan_out = double(shape[0] * shape[2] * shape[3]);
      t = at::empty(shape).normal_(0.0, std::sqrt(2.0 / fan_out), gen);
    } else {
      t = at::ones(shape);  // BN weight
    }
    r.tensors_[name] = t;
  }
  return r;
}

ResNet ResNet::from_tensors(const std::map<std::string, at::Tensor>& in, const std::string& origin) {
  auto get = [&](const std::string& n) -> const at::Tensor& {
    auto it = in.find(n);
    if (it == in.end()) throw InputError(origin + ": missing tensor '" + n + "' (not a torchvision-style ResNet?)");
    return it->second;
  };
  ResNetConfig c;
  const at::Tensor& conv1 = get("conv1.weight");
  if (conv1.dim() != 4) throw InputError(origin + ": conv1.weight must be 4-D");
  c.width = static_cast<int>(conv1.size(0));
  c.imagenet_stem = conv1.size(2) == 7;
  c.bottleneck = in.count("layer1.0.conv3.weight") > 0;
  for (int i = 0; i < 4; ++i) {
    int n = 0;
    while (in.count(block_name(i, n) + "conv1.weight")) ++n;
    if (n == 0) throw InputError(origin + ": stage layer" + std::to_string(i + 1) + " is empty");
    c.layers[i] = n;
  }
  c.num_classes = static_cast<int>(get("fc.weight").size(0));
  ResNet r;
  r.config_ = c;
  for (const auto& [name, shape] : expected_shapes(c)) {
    auto it = in.find(name);
    if (it == in.end()) {
      if (name.find("num_batches_tracked") != std::string::npos) {
        r.tensors_[name] = at::zeros({}, at::kLong);
        continue;
      }
      throw InputError(origin + ": missing tensor '" + name + "'");
    }
    if (it->second.sizes() != at::IntArrayRef(shape))
      throw InputError(origin + ": tensor '" + name + "' has an unexpected shape");
    at::Tensor t = name.find("num_batches_tracked") != std::string::npos ? it->second.to(at::kLong)
                                                                         : it->second.to(at::kFloat).clone();
    if (t.is_floating_point() && !at::isfinite(t).all().item<bool>())
      throw InputError(origin + ": tensor '" + name + "' holds NaN or Inf");
    r.tensors_[name] = t;
  }
  for (const auto& [name, _] : in)
    if (!r.tensors_.count(name)) throw InputError(origin + ": unexpected tensor '" + name + "'");
  return r;
}

ResNet ResNet::load(const std::string& path) {
  namespace stdfs = std::filesystem;
  const std::string file = stdfs::is_directory(path) ? (stdfs::path(path) / "model.safetensors").string() : path;
  const std::string ext = stdfs::path(file).extension().string();
  const std::string convert = "/usr/bin/python3 data_tools/convert_weights.py torchvision-resnet50 FILE.pth DIR";
  if (stdfs::is_directory(path) && !stdfs::exists(file))
    throw InputError(
        file +
        ": missing (the BN prior: a torchvision-named ResNet in safetensors); from a torchvision .pth: " + convert);
  if (ext == ".pth" || ext == ".pt" || ext == ".bin")
    throw InputError(file + ": a PyTorch checkpoint; the BN prior is read from safetensors: convert it once with " +
                     convert);
  return from_tensors(io::load_safetensors(file), file);
}

void ResNet::save(const std::string& dir) const {
  std::filesystem::create_directories(dir);
  io::save_safetensors((std::filesystem::path(dir) / "model.safetensors").string(), tensors_,
                       {{"format", "pt"}, {"producer", "lorarecycle"}, {"architecture", "torchvision ResNet"}});
}

const at::Tensor& ResNet::t(const std::string& name) const { return tensors_.at(name); }

at::Tensor ResNet::bn(const at::Tensor& x, const std::string& n, bool train, std::vector<BnStat>* stats) const {
  if (stats != nullptr) {
    BnStat s;
    s.mean = x.mean({0, 2, 3});
    s.var = x.var({0, 2, 3}, /*unbiased=*/false);
    s.running_mean = t(n + ".running_mean");
    s.running_var = t(n + ".running_var");
    stats->push_back(std::move(s));
  }
  if (train) {
    at::NoGradGuard ng;
    at::Tensor nbt = t(n + ".num_batches_tracked");
    nbt.add_(1);
  }
  return at::batch_norm(x, t(n + ".weight"), t(n + ".bias"), t(n + ".running_mean"), t(n + ".running_var"), train, 0.1,
                        1e-5, false);
}

at::Tensor ResNet::forward(const at::Tensor& input, bool train, std::vector<BnStat>* stats) const {
  const ResNetConfig& c = config_;
  at::Tensor x = at::conv2d(input, t("conv1.weight"), {}, c.imagenet_stem ? 2 : 1, c.imagenet_stem ? 3 : 1);
  x = at::relu(bn(x, "bn1", train, stats));
  if (c.imagenet_stem) x = at::max_pool2d(x, {3, 3}, {2, 2}, {1, 1});
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < c.layers[i]; ++j) {
      const std::string b = block_name(i, j);
      const int stride = (i > 0 && j == 0) ? 2 : 1;
      at::Tensor out;
      if (c.bottleneck) {
        out = at::relu(bn(at::conv2d(x, t(b + "conv1.weight")), b + "bn1", train, stats));
        out = at::relu(bn(at::conv2d(out, t(b + "conv2.weight"), {}, stride, 1), b + "bn2", train, stats));
        out = bn(at::conv2d(out, t(b + "conv3.weight")), b + "bn3", train, stats);
      } else {
        out = at::relu(bn(at::conv2d(x, t(b + "conv1.weight"), {}, stride, 1), b + "bn1", train, stats));
        out = bn(at::conv2d(out, t(b + "conv2.weight"), {}, 1, 1), b + "bn2", train, stats);
      }
      at::Tensor identity = x;
      if (tensors_.count(b + "downsample.0.weight"))
        identity = bn(at::conv2d(x, t(b + "downsample.0.weight"), {}, stride), b + "downsample.1", train, stats);
      x = at::relu(out + identity);
    }
  x = x.mean({2, 3});
  return at::linear(x, t("fc.weight"), t("fc.bias"));
}

std::vector<at::Tensor> ResNet::parameters() const {
  std::vector<at::Tensor> out;
  for (const auto& [name, t] : tensors_)
    if (!is_buffer(name)) out.push_back(t);
  return out;
}

std::vector<at::Tensor> ResNet::buffers() const {
  std::vector<at::Tensor> out;
  for (const auto& [name, t] : tensors_)
    if (name.find("running_") != std::string::npos) out.push_back(t);
  return out;
}

void ResNet::set_requires_grad(bool on) {
  for (auto& [name, t] : tensors_)
    if (!is_buffer(name)) t.requires_grad_(on);
}

void ResNet::to(const c10::Device& device) {
  for (auto& [name, t] : tensors_) {
    const bool g = t.requires_grad();
    t = t.detach().to(device).requires_grad_(g && t.is_floating_point());
  }
}

void ResNet::load_values(const std::map<std::string, at::Tensor>& in, const std::string& origin) {
  at::NoGradGuard ng;
  for (auto& [name, t] : tensors_) {
    auto it = in.find(name);
    if (it == in.end() || it->second.sizes() != t.sizes())
      throw InputError(origin + ": tensor '" + name + "' missing or of another shape");
    t.copy_(it->second);
  }
}

}  // namespace lorarec::model
