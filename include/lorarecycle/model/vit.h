// The HF CLIP vision tower (DESIGN 2.1) with LoRA (2.2) and token selection/pruning (2.6),
// written functionally on ATen: weights are plain tensors, LoRA factors are the only tensors
// that may require grad. The VFM is frozen everywhere.
//
// Thread-safety: forward() is const and may run concurrently on distinct inputs.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <array>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "lorarecycle/model/clip_config.h"

namespace lorarec::model {

// The linear layers of an encoder layer that a LoRA can target (HF names).
enum class Module { kQ = 0, kK, kV, kOut, kFc1, kFc2 };
inline constexpr int kNumModules = 6;
const char* module_name(Module m);             // "q_proj", ..., "fc2"
const char* module_path(Module m);             // "self_attn.q_proj", ..., "mlp.fc2"
Module parse_module(const std::string& name);  // accepts "q_proj" or "self_attn.q_proj"; InputError otherwise

struct LoraConfig {
  int r = 4;         // rank
  double alpha = 4;  // scale = alpha / r (official code: alpha = r)
  std::vector<Module> target_modules{Module::kQ, Module::kV};
  std::vector<int> layers;  // empty = every layer
  void validate(const ClipVisionConfig& vit, const std::string& origin) const;
  double scale() const { return alpha / r; }
};

// One low-rank adapter: y += scale * B (A x).
struct Adapter {
  at::Tensor a;  // [r, in]
  at::Tensor b;  // [out, r]
};

// A set of adapters over a ViT plus an optional classifier head on the projected feature.
class Lora {
 public:
  Lora() = default;
  // Fresh adapters: A kaiming-uniform(a = sqrt(5)) = U(+-1/sqrt(in)), B = 0. float32 on CPU.
  Lora(const ClipVisionConfig& vit, const LoraConfig& cfg, std::uint64_t seed);
  // No adapters yet (for loaders, which add them with set()).
  static Lora empty(const ClipVisionConfig& vit, const LoraConfig& cfg);

  const LoraConfig& config() const { return config_; }
  const ClipVisionConfig& vit_config() const { return vit_; }
  double scale() const { return config_.scale(); }
  // nullptr when (layer, module) has no adapter.
  const Adapter* find(int layer, Module m) const;
  Adapter* find(int layer, Module m);
  // Sets one adapter; shapes are checked against the ViT config (InputError).
  void set(int layer, Module m, Adapter adapter);
  const std::map<std::pair<int, int>, Adapter>& adapters() const { return adapters_; }

  // Classifier head Linear(projection_dim -> n_classes, bias). U(+-1/sqrt(in)) init.
  void init_head(int n_classes, std::uint64_t seed);
  void set_head(at::Tensor weight, at::Tensor bias);  // [n, proj], [n]
  bool has_head() const { return head_weight_.defined(); }
  const at::Tensor& head_weight() const { return head_weight_; }
  const at::Tensor& head_bias() const { return head_bias_; }
  at::Tensor head(const at::Tensor& feature) const;  // [B, proj] -> [B, n]

  // The trainable tensors in a fixed order (layer, module, A then B; then head W, b).
  std::vector<at::Tensor> parameters(bool include_head) const;
  void set_requires_grad(bool on, bool include_head);
  void to(const c10::Device& device);
  int64_t num_parameters(bool include_head) const;

 private:
  ClipVisionConfig vit_;
  LoraConfig config_;
  std::map<std::pair<int, int>, Adapter> adapters_;  // key (layer, module index)
  at::Tensor head_weight_, head_bias_;
};

// InputError ("<what>: ...") unless there is at least one LoRA and all have the same rank, scale
// and adapted modules (what averaging and composing need).
void require_same_shape(const std::vector<Lora>& loras, const std::string& what);

// Averages LoRAs of one shape (same targets, layers and scale) into one exact adapter whose weight
// delta is the mean of theirs: A = [A_1; ..; A_K], B = [B_1 .. B_K] / K (rank K r).
Lora average_loras(const std::vector<Lora>& loras, const ClipVisionConfig& vit);

// y + scale * (x a^T) b^T (x [.., in], a [r, in], b [out, r], y [.., out]) as one autograd node with
// a hand-written backward, computed in y's dtype (a and b are cast to it; their gradients come
// back in their own dtype). Every LoRA delta of ClipVision::forward goes through it.
at::Tensor lora_add(const at::Tensor& y, const at::Tensor& x, const at::Tensor& a, const at::Tensor& b, double scale);

// x (w + scale b a)^T + bias (x [.., in], w [out, in] and bias [out] frozen, a [r, in], b [out, r]) as
// one autograd node: the adapter merged into w for the call (in float, cast to w's dtype), x's
// gradient through the merged weights, a's and b's from the delta's gradient g^T x; computed in w's
// dtype without autocast, gradients in their inputs' dtypes. First derivatives only.
at::Tensor merged_lora_linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, const at::Tensor& a,
                              const at::Tensor& b, double scale);
// Whether merged_lora_linear costs fewer multiply-adds than the frozen product plus lora_add for n
// rows, with the adapter's gradients: lora_add's adapter costs 3 n r (in + out) with them, the
// merged form n in out (the delta's gradient) plus 3 in out r per call (the merge, a's and b's
// gradients). At rank 80 on width 128 it does from ~90 rows (out_proj) or ~180 (the MLP).
// (attention_block's q/k/v use this rule's many-rows limit, r > D / 6: vit.cpp, merged_adapter.)
bool merged_adapter_pays(int64_t n, int64_t in, int64_t out, int64_t r);
// ClipVision::forward merges trained adapters where merged_adapter_pays (on by default; off from the
// start under LORAREC_UNMERGED_LORA=1, for benchmarks and for re-running figures made before it).
void set_adapter_merging(bool on);
bool adapter_merging();

// One encoder layer's attention from its first LayerNorm's output h [B, T, D] to the heads' merged
// output [B, Tq, D] (before out_proj), as one autograd node with a hand-written backward: q, k, v
// = h W^T + b from the stacked frozen projections w_qkv [3D, D] (b_qkv [3D] or undefined), each
// plus lora_scale * (h A^T) B^T where adapters (q, k, v) has one; then softmax(q k^T / sqrt(dh)) v
// over `heads` heads, the softmax as softmax_last_dim's. Tq is T, or 1 for the CLS query alone (k
// and v still of every token). Computed in w_qkv's dtype without autocast; h's and the adapters'
// gradients come back in their own dtypes. Separate ops would make ~30 autograd nodes of it, whose
// cost does not shrink with the tokens (docs/metatrain.md). First derivatives only.
at::Tensor attention_block(const at::Tensor& h, const at::Tensor& w_qkv, const at::Tensor& b_qkv,
                           const std::array<const Adapter*, 3>& adapters, int64_t heads, int64_t tq, double lora_scale);

// CLIP's QuickGELU, x * sigmoid(1.702 x), in x's dtype. On CPU float and bf16 tensors one pass over
// memory each way (forward, and the backward as one autograd node that saves x alone), computed in
// float with one rounding; elsewhere the same formulas in ATen ops. ClipVision::forward's MLP.
// First derivatives only: a backward with create_graph through it throws RuntimeError.
at::Tensor quick_gelu(const at::Tensor& x);

// at::bmm(a, b) for 3-d a [N, m, k] and b [N, k, n], without autograd (the attention node's
// products). For float CPU tensors where the build found a CBLAS (LORAREC_HAVE_CBLAS): one
// cblas_sgemm per matrix on the operands' own strides (a transposed view is BLAS's transpose
// flag, not a copy), the matrices spread over ATen's threads. ATen 1.13 runs a float bmm on the
// CPU as one select and one mm op per matrix (about a thousand ops per product of an 80-image
// episode's heads), its own dispatch cost above the products' (docs/metatrain.md). Any other
// dtype or device, BLAS-unfriendly strides, or matrices of fewer than 400 multiply-adds (which
// ATen computes in its own loops, with no op per matrix): at::bmm.
at::Tensor bmm_nograd(const at::Tensor& a, const at::Tensor& b);
// Whether this build has the CBLAS path of bmm_nograd.
bool blas_bmm_available();

// softmax over x's last dimension, in x's dtype, as one autograd node that saves its output. On
// CPU float and bf16 tensors (where the CPU has AVX2 or AVX-512) a row kernel computed in float
// with one rounding, forward and backward; elsewhere ATen's softmax and its backward. The
// attention of ClipVision::forward. First derivatives only, as quick_gelu.
at::Tensor softmax_last_dim(const at::Tensor& x);

// LayerNorm over x's last dimension with weight w and bias b, as ATen's at::layer_norm, written in
// `out` (float or bf16): on CPU float x with frozen float weights (no gradient asked for) a row
// kernel computed in float with one rounding, and where x needs a gradient one autograd node that
// gives it in float from a float or bf16 output gradient. Elsewhere, or for another `out`,
// at::layer_norm (its result in its own dtype: float under CPU autocast). ClipVision::forward's
// LayerNorms write bf16 under autocast where a bf16 matmul is their one consumer, so that no cast
// follows them. First derivatives only, as quick_gelu.
at::Tensor layer_norm_as(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, double eps, at::ScalarType out);

// The residual add before a LayerNorm fused with it: {v, h} with v = x + y (+ bias) and h =
// layer_norm_as(v, w, b, eps, out), as one autograd node over one kernel pass each way (x float,
// y float or bf16 of x's shape, bias [D] or undefined, all of x, bias, w and b on the CPU with no
// gradient asked of bias, w or b; elsewhere the separate ops). The backward adds v's two
// gradients (from further on and through the LayerNorm) in the same pass: x gets the sum in
// float, y the same rounded to its dtype. First derivatives only.
std::pair<at::Tensor, at::Tensor> add_layer_norm_as(const at::Tensor& x, const at::Tensor& y, const at::Tensor& bias,
                                                    const at::Tensor& w, const at::Tensor& b, double eps,
                                                    at::ScalarType out);

// The best rank-r approximation (truncated SVD, Eckart-Young) of each of src's weight deltas
// scale * B A, as a LoRA of rank r and lora_alpha alpha on src's adapted modules. With s = alpha / r:
// B = U sqrt(S / s), A = sqrt(S / s) V^T (factors of equal norms). kept_share (optional): the share
// of the deltas' summed squared Frobenius norm that the approximation keeps (1 when r >= src's
// rank). float32 on the CPU, no head.
Lora low_rank(const Lora& src, int r, double alpha, double* kept_share = nullptr);

// Options of one forward pass.
struct ForwardOptions {
  // Sparse tokens: [B, T] int64 indices of the original patches to feed (each row in any order;
  // the same T for every image). Undefined = all patches.
  at::Tensor patch_index;
  // Token pruning (DESIGN 2.6): (layer, ratio) pairs. After layer l's attention, the
  // int(ratio * count) patches with the lowest head-averaged CLS attention are dropped.
  std::vector<std::pair<int, double>> prune;
  // The last layer computes attention for the CLS query and its MLP for CLS only: exact for the
  // feature and cheaper. Off = the whole last layer (for checking).
  bool cls_only_last = true;
  // Also return the last layer's CLS-attention scores and the keep mask.
  bool want_scores = false;
  // Reproduce the official code's bug: the residual of a pruning layer's MLP taken after LN2.
  bool official_prune_residual = false;
  // When set: the residual stream entering each layer ([B, T, D], after the pre-LayerNorm for layer
  // 0), one tensor per layer, appended in layer order (the inversion's feature prior).
  std::vector<at::Tensor>* layer_inputs = nullptr;
};

struct ForwardOutput {
  at::Tensor feature;       // [B, projection_dim] (hidden_size when the file has no projection)
  at::Tensor patch_index;   // [B, T_final] int64 original indices of the patches that survived
  at::Tensor patch_scores;  // [B, P] float: last layer's head-averaged CLS attention per original
                            //   patch, 0 for patches not present at the last layer (want_scores)
  at::Tensor keep_mask;     // [B, P] bool: patches that survived all pruning (want_scores)
};

// How attention is computed: kExplicit (softmax(q k^T / sqrt(d)) v as matmuls, LibTorch 1.x and
// later) or kFused (at::scaled_dot_product_attention, LibTorch >= 2.0: flash / memory-efficient
// kernels where the device has them). Where pruning or the patch scores need the CLS query's
// attention row, kFused computes that row alone beside the fused call. kExplicit runs a layer's
// projections and attention as one autograd node (attention_block) where the q/k/v weights are
// frozen and no CLS row is asked for; kExplicitOps is the same computation as separate ATen ops,
// one autograd node each (tests and benchmarks; LORAREC_UNFUSED_ATTENTION=1 makes it the default
// of the explicit path).
enum class Attention { kExplicit, kFused, kExplicitOps };
// Whether this build's LibTorch has the fused path (chosen at compile time: LibTorch >= 2.0).
bool fused_attention_available();
// kFused where available, else kExplicit (kExplicitOps under LORAREC_UNFUSED_ATTENTION=1).
Attention default_attention();

// Compute precision of the ViT's forward pass: float32, or bf16 autocast (matmuls in bf16,
// norms, softmax and reductions in float32, as LibTorch's autocast lists say) with float32
// weights, gradients and optimizer state.
enum class Precision { kFp32, kBf16 };
const char* precision_name(Precision p);
struct PrecisionChoice {
  Precision precision = Precision::kFp32;
  std::string reason;  // why, for the log: "asked for", "auto: this CPU has avx512_bf16", ...
  // Set when bf16 was asked for on a CPU without bf16 instructions: LibTorch then emulates the
  // bf16 matmuls, slower than fp32 (the run says so at the start, as a warning).
  std::string warning;
};
// "fp32" | "bf16" | "auto". auto = bf16 where the device runs it natively: a CPU with
// avx512_bf16 or amx_bf16 (read from /proc/cpuinfo), a CUDA GPU with bf16 support (compute
// capability >= 8); fp32 elsewhere. bf16 asked for on a CPU without avx512_bf16 or amx_bf16 is
// kept, with a warning. InputError for another spec.
PrecisionChoice resolve_precision(const std::string& spec, const c10::Device& device);
// TF32 for fp32 matmuls and convolutions on CUDA (cuBLAS and cuDNN, as PyTorch's allow_tf32);
// process-wide, no effect on CPUs. tf32_enabled() reads back what cuBLAS was set to.
void set_tf32(bool on);
bool tf32_enabled();
// The CPU's bf16 instruction sets found in /proc/cpuinfo ("avx512_bf16", "amx_bf16", joined by
// '+'), empty when none (or no /proc/cpuinfo).
std::string cpu_bf16_features();
// Whether LibTorch's bf16 matmul on this CPU sums its products in float (oneDNN's kernels, on CPUs
// with AVX-512) rather than in bf16 (ATen's fallback in LibTorch 1.13 for a plain [M, K] x [K, N]
// product on other CPUs: ~1-3 % relative error at K = 128-512). Probed once, with a product whose
// sum a bf16 accumulator cannot reach (512 ones: a bf16 sum stops at 256).
bool bf16_matmul_accumulates_in_float();

class ClipVision {
 public:
  ClipVision() = default;

  // Loads an HF model directory (config.json, preprocessor_config.json, model.safetensors).
  static ClipVision load(const std::string& dir);
  // Builds from HF-named tensors (full CLIPModel or CLIPVisionModel; text keys ignored).
  // Missing keys, unexpected vision keys, wrong shapes and non-finite values: InputError.
  static ClipVision from_tensors(const ClipVisionConfig& cfg, const std::map<std::string, at::Tensor>& tensors,
                                 const std::string& origin);
  // Random weights with HF CLIP's initialisation, for pre-training from scratch and tests.
  static ClipVision random(const ClipVisionConfig& cfg, std::uint64_t seed);

  // HF-named tensors (CLIPModel vision tower + visual_projection). The tensors are the model's
  // own (shared storage): updating them in place updates the model.
  std::map<std::string, at::Tensor> state_dict() const;
  // Every weight, in state_dict order, for pre-training (the VFM is frozen everywhere else).
  std::vector<at::Tensor> parameters() const;
  void set_requires_grad(bool on);
  // Copies values from HF-named tensors of the same shapes (a checkpoint). InputError otherwise.
  void load_values(const std::map<std::string, at::Tensor>& tensors, const std::string& origin);
  // Writes config.json, preprocessor_config.json and model.safetensors into dir (atomically each).
  void save(const std::string& dir) const;

  const ClipVisionConfig& config() const { return config_; }
  int feature_dim() const;
  c10::Device device() const;
  void to(const c10::Device& device);

  // uint8 images [B, H, W, C] (C = 1 or 3) -> float [B, 3, S, S] normalised with image_mean /
  // image_std; resized (bicubic) to image_size when H or W differ; 1 channel is repeated.
  at::Tensor preprocess(const at::Tensor& images_u8) const;
  // Valid range of normalised pixels per channel: [-mean/std, (1-mean)/std], each [3].
  std::pair<at::Tensor, at::Tensor> pixel_bounds() const;

  // pixels [B, 3, S, S] normalised -> feature (and more, see ForwardOptions). Under
  // Precision::kBf16 the pass runs under bf16 autocast (weights stay float32) and the float
  // outputs come back as float32.
  ForwardOutput forward(const at::Tensor& pixels, const ForwardOptions& opts = {}, const Lora* lora = nullptr) const;

  // Compute precision of forward() (default fp32). Pre-training and the zoo stay in fp32. Under
  // kBf16 the encoder's Linear weights and biases are also held as bf16 copies (made here, by to()
  // and by load_values()), so that a forward does not cast the frozen weights again each time
  // (the same values autocast would make); weights that require grad are used as they are.
  void set_precision(Precision p);
  Precision precision() const { return precision_; }
  // Attention path of forward(); the default is kFused where available, else kExplicit. InputError
  // for kFused where this LibTorch lacks it.
  void set_attention(Attention a);
  Attention attention() const { return attention_; }

 private:
  struct Layer {
    at::Tensor ln1_w, ln1_b, ln2_w, ln2_b;
    at::Tensor w[kNumModules];  // Module order
    at::Tensor b[kNumModules];
    at::Tensor w_lp[kNumModules], b_lp[kNumModules];  // bf16 copies under Precision::kBf16, else undefined
    // q, k and v stacked [3D, D] (and their biases [3D]), in the compute precision: one matmul for
    // the three projections of frozen weights. Undefined while the weights train or when only some
    // of q, k, v have a bias.
    at::Tensor w_qkv, b_qkv;
  };
  // Rebuilds the derived copies of the frozen weights (bf16 copies, stacked q/k/v) after the
  // weights, their device, precision or requires_grad changed.
  void refresh_derived_weights();
  at::Tensor linear(const at::Tensor& x, int layer, Module m, const Lora* lora) const;
  // x + lora's delta of module m at `layer` (x itself when the LoRA has none there).
  at::Tensor add_lora(at::Tensor y, const at::Tensor& x, int layer, Module m, const Lora* lora) const;
  // The adapter of (layer, m) where merged_lora_linear should apply it to x: one with gradients
  // (trained), over frozen weights, with grad mode on, where merged_adapter_pays; else nullptr.
  const Adapter* merge_here(const at::Tensor& x, int layer, Module m, const Lora* lora) const;
  // q [B, H, Tq, dh] of hq and k, v [B, H, T, dh] of h (hq: h or its CLS row), with the LoRA's deltas.
  std::array<at::Tensor, 3> qkv(const at::Tensor& h, const at::Tensor& hq, int layer, const Lora* lora) const;
  // x + module m's output of `in` at `layer` (with the LoRA's delta), then the LayerNorm (ln_w,
  // ln_b) of that sum in `out`: {sum, LayerNorm}. On the CPU with frozen weights one node
  // (add_layer_norm_as, the module's bias added there); elsewhere the separate ops.
  std::pair<at::Tensor, at::Tensor> residual_norm(const at::Tensor& x, const at::Tensor& in, int layer, Module m,
                                                  const Lora* lora, const at::Tensor& ln_w, const at::Tensor& ln_b,
                                                  at::ScalarType out) const;
  ForwardOutput forward_impl(const at::Tensor& pixels, const ForwardOptions& opts, const Lora* lora) const;
  at::Tensor embed_tokens(const at::Tensor& pixels, const at::Tensor& patch_index, bool track, at::Tensor* index) const;

  // o [B, H, Tq, dh] of queries q [B, H, Tq, dh] (not yet scaled) over k, v [B, H, T, dh];
  // cls_row (when asked for): the first query's attention over the T keys, [B, H, T].
  at::Tensor attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, at::Tensor* cls_row) const;

  ClipVisionConfig config_;
  Precision precision_ = Precision::kFp32;
  Attention attention_ = default_attention();
  at::Tensor patch_w_;    // [D, C, p, p]
  at::Tensor class_emb_;  // [D]
  at::Tensor pos_emb_;    // [1 + P, D]
  at::Tensor pre_ln_w_, pre_ln_b_, post_ln_w_, post_ln_b_;
  at::Tensor proj_;  // [proj, D] or undefined
  std::vector<Layer> layers_;
};

// The pixel pipeline of ClipVision::preprocess for a config, on `device`: also used for networks
// that share the VFM's pixels (the BN prior).
at::Tensor preprocess_images(const at::Tensor& images_u8, const ClipVisionConfig& cfg, const c10::Device& device);
// InputError naming `origin` unless the images are [N, H, W, C] with C = 1 or the model's channel
// count and H, W at least one patch. Images of another size than image_size are resized by
// preprocess (see resize_center_crop): one warning line (rank 0) says so when `warn_resize`.
void check_image_shape(c10::IntArrayRef nhwc, const ClipVisionConfig& cfg, const std::string& origin,
                       bool warn_resize = true);
// CLIP's image preprocessing geometry on float [N, C, H, W]: the shorter side to `size` (bicubic;
// antialiased when shrinking, as PIL), then the centre size x size crop. Unchanged when already
// size x size.
at::Tensor resize_center_crop(const at::Tensor& nchw, int64_t size);
// The same on uint8 [N, H, W, C] images, rounded back to uint8 (for sets of images of mixed sizes).
at::Tensor fit_images(const at::Tensor& images_u8, int64_t size);

// RAII: enables autocast to bf16 on the given device type for its lifetime (CPU or CUDA).
class AutocastScope {
 public:
  AutocastScope(c10::DeviceType type, bool enabled);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  c10::DeviceType type_;
  bool enabled_;
  bool prev_ = false;
};

// Picks the compute device: "cpu", "cuda", "cuda:N" or "auto" (CUDA when LibTorch has it, device
// local_rank % count). InputError when CUDA is asked for and absent.
c10::Device select_device(const std::string& spec, int local_rank);

}  // namespace lorarec::model
