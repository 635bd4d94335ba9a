// A ResNet with BatchNorm in torchvision's naming (conv1, bn1, layer{1..4}.{j}.{conv,bn}{1..3},
// layer{i}.0.downsample.{0,1}, fc): the frozen CNN prior of DeepInversion's BN loss (DESIGN 2.4).
// BasicBlock or Bottleneck; CIFAR stem (3x3, stride 1, no max-pool) or ImageNet stem (7x7 stride 2
// + max-pool). A user's torchvision ResNet-50 saved to safetensors loads unchanged: the structure
// is read off the tensor names and shapes.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace lorarec::model {

struct ResNetConfig {
  bool bottleneck = false;              // Bottleneck (ResNet-50) or BasicBlock (ResNet-18)
  std::vector<int> layers{1, 1, 1, 1};  // blocks per stage
  int width = 32;                       // channels of the stem and stage 1 (torchvision: 64)
  bool imagenet_stem = false;           // 7x7/2 conv + 3x3/2 max-pool; else 3x3/1 conv
  int num_classes = 10;                 // fc outputs
};

// Input statistics of one BatchNorm layer in a forward pass, over (N, H, W).
struct BnStat {
  at::Tensor mean, var;                  // [C] of the batch (var biased)
  at::Tensor running_mean, running_var;  // [C] the layer's stored statistics
};

class ResNet {
 public:
  static ResNet random(const ResNetConfig& cfg, std::uint64_t seed);
  // model.safetensors of a directory, or a .safetensors file. InputError for missing/odd tensors.
  static ResNet load(const std::string& path);
  static ResNet from_tensors(const std::map<std::string, at::Tensor>& tensors, const std::string& origin);
  // <dir>/model.safetensors (torchvision names, float32).
  void save(const std::string& dir) const;

  const ResNetConfig& config() const { return config_; }
  // [B, 3, H, W] normalised pixels -> logits [B, num_classes]. train = batch statistics (and
  // running-stat updates); else the running statistics. `stats` (optional) receives every BN
  // layer's input statistics, in layer order.
  at::Tensor forward(const at::Tensor& x, bool train, std::vector<BnStat>* stats = nullptr) const;

  std::map<std::string, at::Tensor> state_dict() const { return tensors_; }
  std::vector<at::Tensor> parameters() const;  // trainable: conv/bn/fc weights and biases
  std::vector<at::Tensor> buffers() const;     // running_mean / running_var
  void set_requires_grad(bool on);
  void to(const c10::Device& device);
  void load_values(const std::map<std::string, at::Tensor>& tensors, const std::string& origin);

 private:
  at::Tensor bn(const at::Tensor& x, const std::string& name, bool train, std::vector<BnStat>* stats) const;
  const at::Tensor& t(const std::string& name) const;
  ResNetConfig config_;
  std::map<std::string, at::Tensor> tensors_;
};

}  // namespace lorarec::model
