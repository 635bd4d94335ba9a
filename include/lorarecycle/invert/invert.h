// LoRA inversion (DESIGN 2.4): one zoo LoRA (VFM + LoRA + head, the frozen teacher) -> surrogate
// images of its classes, by optimising noise in normalised pixel space so that the teacher
// classifies it as the wanted class, with a DeepInversion BN prior, and token pruning from a
// fraction of the iterations on (DESIGN 2.6).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "lorarecycle/model/resnet.h"
#include "lorarecycle/model/vit.h"

namespace lorarec::invert {

struct InversionConfig {
  int per_class = 10;     // surrogate images per class
  int iterations = 2000;  // Adam steps (paper 2000)
  double lr = 0.25;       // Adam, betas (0.5, 0.99)
  double beta1 = 0.5, beta2 = 0.99;
  double w_ce = 1.0;             // oh: cross-entropy weight
  double w_bn = 0.01;            // BN-prior weight (0 or no prior: off)
  double w_tv = 0.0;             // total variation
  double w_l2 = 0.0;             // ||X||
  double w_div = 0.0;            // diversity: mean cosine between teacher features of two images of one class
  int jitter = -1;               // max roll in pixels (-1: image_size / 8)
  bool flip = true;              // random horizontal flip
  bool per_image = false;        // each image its own roll and flip per iteration (false: one for the batch)
  double target_mix = 0.0;       // > 0: image i's target puts a share u_i ~ U(0, target_mix) on a second class c_i
                                 // of the LoRA (both drawn once per image, seeded); 0: one-hot targets
  double zoom = 0.0;             // > 0: every iteration also crops a square of side s * S, s ~ U(1 - zoom, 1), at a
                                 // random place and resizes it back to S (bilinear), one crop for the batch; 0: off
  double affine = 0.0;           // > 0: every iteration each image is also seen through its own random affine map
                                 // of this strength (data::random_affine; white brought in), after the roll,
                                 // flip and zoom; 0: off
  double stop_confidence = 0.0;  // > 0: an image whose teacher probability of its class reached this gets no
                                 // cross-entropy gradient in that iteration (it stops short of the class's mode);
                                 // 0: off
  int white_border = 0;          // > 0: the outer this many pixels of every surrogate are held at white (pixel value
                                 // 1) from the start and after every step: the margin of dark-on-white data
                                 // (glyphs, documents), so the class must be drawn inside it; 0: off (the paper)
  int init_lowres = 0;           // > 0: image i starts as N(0, 1) noise drawn at r_i x r_i, r_i = init_lowres * 2^k
                                 // (k uniform, r_i <= S), resized to S x S (bilinear) and brought to unit std: smooth
                                 // blobs of several sizes instead of white noise; 0: white noise (the paper)
  double fourier = 0.0;          // > 0: the optimised variable is the image's spectrum (rfft2, orthonormal), each
                                 // frequency f scaled by 1 / max(|f|, 1/S)^fourier (fourier_scale), and Adam steps
                                 // on it: the decorrelated parametrisation of feature visualisation (Olah et al.
                                 // 2017), whose steps move low frequencies more than pixel steps do; the start
                                 // images are the same; after every step the image is clamped to valid pixels and
                                 // its spectrum re-read; 0: pixels (the paper)
  int strokes = 0;               // > 0: each surrogate is drawn as this many soft dark line segments on white
                                 // (render_strokes) and Adam steps on their end points, widths and ink instead
                                 // of on pixels: a prior of line drawings (glyphs, sketches) with no image of
                                 // the data; the jitter and the margin apply to the drawn image; 0: pixels (the
                                 // paper)
  at::Tensor init_images;        // defined: image i starts as a row of this uint8 [M, S, S, C] set (C 1 or 3), drawn
                                 // uniformly per image (seeded), instead of noise: e.g. the VFM's pre-training
                                 // images, which hold none of the zoo's classes (invert --init-images)
  int co_teachers = 0;           // > 0: each surrogate of class c must also be c to up to this many other zoo
                                 // LoRAs whose tasks hold c (invert --co-teachers; the co-teachers passed to
                                 // invert_lora); 0: its own LoRA only (the paper)
  double w_co = 1.0;             // weight of the co-teachers' cross-entropy
  at::Tensor feature_prior;      // defined: a uint8 [M, S, S, C] image set (e.g. the VFM's pre-training images) whose
                                 // token statistics under the inverted LoRA the surrogates' must match (the feature
                                 // prior: DeepInversion's BN term on the ViT's own residual stream; invert
                                 // --feature-prior); undefined: off
  double w_feat = 1.0;           // weight of the feature-prior term
  double w_adv = 0.0;            // > 0 with a student passed to invert_lora (invert --student): weight of the
                                 // student term (student_term): the surrogates move to where the student's
                                 // prototypes misplace them; 0: off (the paper)
  double adv_temperature = 128;  // the student's prototype logits are -squared distance / this (metatrain's
                                 // --temperature)
  int feature_prior_samples = 512;  // images of the set the statistics are computed on (drawn per LoRA, seeded)
  bool gray = false;                // optimise one grey channel shared by R, G, B (greyscale domains)
  double prune_start = 0.25;        // fraction of the iterations after which pruning is on
  std::vector<std::pair<int, double>> prune;  // (layer, ratio); empty = no pruning
  bool cls_only_last = true;                  // the last layer computes CLS only (off: the official full layer)
  std::uint64_t seed = 0;
};

// The loss terms on a batch (exposed for tests).
struct LossTerms {
  at::Tensor ce, bn, tv, l2, div, co, feat, adv, total;  // scalars (co, feat, adv: the co-teachers', the feature
                                                         // prior's and the student's terms, undefined without them)
};
// ce over teacher logits; bn = sum over BN layers of ||running_var - var||_2 + ||running_mean - mean||_2
// (0 without stats); tv = mean squared difference of vertical + horizontal neighbours of x;
// l2 = ||x||_2 over the whole batch; div = mean cosine similarity of features [B, d] over the pairs
// (i != j) of images with the same target (0 without features or without such pairs). With
// soft_targets [B, N] (rows summing to 1), ce = mean over images of -sum_c soft * log softmax. With
// cfg.stop_confidence > 0, the images whose softmax probability of their target reached it count
// 0 in that mean (the mean stays over all B images).
LossTerms loss_terms(const at::Tensor& logits, const at::Tensor& targets, const std::vector<model::BnStat>* stats,
                     const at::Tensor& x, const InversionConfig& cfg, const at::Tensor* features = nullptr,
                     const at::Tensor* soft_targets = nullptr);
// The soft targets of cfg.target_mix for n images of N classes with labels y (class-interleaved):
// row i = (1 - u_i) one-hot(y_i) + u_i one-hot(c_i), u_i ~ U(0, target_mix), c_i != y_i uniform;
// drawn from make_rng(seed, stream, ...), so the same for every run.
at::Tensor mixed_targets(const at::Tensor& y, int64_t N, double target_mix, std::uint64_t seed, std::uint64_t stream);
// The student term: how well a student (e.g. the meta-LoRA being trained) classifies the batch by
// prototypes, as the mean over images of -log(1 - p_S(y_i | x_i)), where p_S is the student's
// prototype classifier over the N classes: logits -||f_i - p_c||^2 / temperature, p_c the mean of
// student_features [B, D] over the batch's images of class c (labels y [B] in 0..N-1), leaving
// image i out of its own class's mean. Minimised, it moves each image away from what the student
// takes for its class while the teacher's cross-entropy keeps the class: adversarial inversion as in
// data-free distillation, here against an episodic learner. >= 0; computed in float; throws
// InputError when a class has fewer than 2 images.
at::Tensor student_term(const at::Tensor& student_features, const at::Tensor& y, int64_t N, double temperature);
// Rolls image b of x [B, C, H, W] by (dy[b], dx[b]) pixels (at::roll's direction) and mirrors it
// horizontally where flip[b] (flip may be empty); differentiable in x.
at::Tensor roll_each(const at::Tensor& x, const std::vector<int>& dy, const std::vector<int>& dx,
                     const std::vector<bool>& flip);
// The zoom view of x [B, C, S, S]: the square of side `side` at (y0, x0) resized back to S x S
// (bilinear, differentiable in x); x itself when side >= S.
at::Tensor zoom_view(const at::Tensor& x, int side, int y0, int x0);
// Sets the outer `border` pixels of x [B, C, S, S] to `white` ([C] or [1]: the normalised value of
// pixel 1 per channel), in place, outside autograd; border 0 leaves x as it is.
void hold_white_border(at::Tensor& x, int border, const at::Tensor& white);
// The starting images [n, C, S, S] of cfg.init_lowres (see InversionConfig), drawn from rng and
// at::randn (seeded by the caller).
at::Tensor lowres_noise(int64_t n, int64_t C, int S, int init_lowres, std::mt19937_64& rng, const c10::Device& dev);
// The starting images [n, C, S, S] (normalised like the optimised variable: C 1 for gray, else 3) of
// n rows of `set` (uint8 [M, S, S, 1 or 3]) drawn uniformly from rng; gray takes the channel mean.
at::Tensor start_images(const at::Tensor& set, int64_t n, bool gray, const model::ClipVisionConfig& mc,
                        std::mt19937_64& rng, const c10::Device& dev);
// Per-channel statistics of the residual stream entering one layer, over images and tokens.
struct TokenStat {
  at::Tensor mean, var;  // float [D] (var: biased)
};
// The statistics of every layer's input (ForwardOptions::layer_inputs) for the normalised images
// `pixels` [M, 3, S, S] under `lora` (null: the bare VFM) with the forward options `fo` (its
// layer_inputs is ignored), in chunks of `chunk` images, without gradients.
std::vector<TokenStat> token_stats(const model::ClipVision& vit, const model::Lora* lora, const at::Tensor& pixels,
                                   model::ForwardOptions fo, int64_t chunk = 128);
// The feature prior: sum over layers of ||mean - target.mean||_2 + ||var - target.var||_2, where
// mean and var (biased) are the batch's over images and tokens (layer_inputs [B, T, D], any float
// type; computed in float). Throws InputError when the layer counts or widths differ.
at::Tensor token_stat_loss(const std::vector<at::Tensor>& layer_inputs, const std::vector<TokenStat>& target);
// The per-frequency scale [S, S/2 + 1] of an S x S image's rfft2 spectrum for --fourier D:
// 1 / max(|f|, 1/S)^D, |f| in cycles per pixel, divided by its root mean square over the full S x S
// spectrum (so that equal steps on every coefficient move the pixels by as much in all as steps on the
// pixels do); on dev. Throws InputError for S < 2 or D < 0.
at::Tensor fourier_scale(int S, double decay, const c10::Device& dev);
// Images x [n, C, S, S] -> their optimised spectrum [n, C, S, S/2 + 1, 2] (real, imaginary):
// rfft2 (orthonormal) divided by scale; float.
at::Tensor to_spectrum(const at::Tensor& x, const at::Tensor& scale);
// The inverse of to_spectrum: irfft2 (orthonormal) of the spectrum v times scale, [n, C, S, S];
// differentiable in v.
at::Tensor from_spectrum(const at::Tensor& v, const at::Tensor& scale, int S);
// --strokes: the grey images [n, 1, S, S] in [0, 1] (1 white) of n drawings of K soft line segments,
// params [n, K, 6] per segment (x0, y0, x1, y1, w, a): the end points at sigmoid(.) x (S - 1) pixels
// (pixel centres 0 .. S - 1, x the column), the width 1 + 3 sigmoid(w) pixels, the ink sigmoid(a).
// A pixel at distance d from a segment takes ink a x sigmoid((width / 2 - d) / 0.5 px) from it, and
// the inks multiply: pixel = prod over segments of (1 - ink). Differentiable in params; throws
// InputError for another shape or S < 2.
at::Tensor render_strokes(const at::Tensor& params, int S);
// Throws InputError unless cfg.strokes is in [0, 64] and, when > 0, neither cfg.fourier, cfg.init_lowres
// nor start images (init_images: given, or cfg.init_images defined) are set: a drawing has its own start.
void check_strokes(const InversionConfig& cfg, bool init_images);
// The start of --strokes: params [n, K, 6] of K segments per image with centres uniform in the inner
// 60 % of the image, directions uniform, lengths uniform in [0.15, 0.5] x S, width 2 px, ink 0.88;
// drawn from rng (float, on dev).
at::Tensor init_strokes(int64_t n, int K, int S, std::mt19937_64& rng, const c10::Device& dev);
// Clamps every channel of [B, 3, H, W] to [lo_c, hi_c] in place.
void clamp_pixels(at::Tensor& x, const at::Tensor& lo, const at::Tensor& hi);
// Normalised pixels -> uint8 [B, H, W, 3] (inverse of ClipVision::preprocess, no resize).
at::Tensor to_uint8(const model::ClipVision& vit, const at::Tensor& x);

struct Surrogates {
  at::Tensor images;           // uint8 [n, S, S, 3]
  at::Tensor labels;           // int32 [n] local class 0..N-1 (class-interleaved)
  at::Tensor teacher_logits;   // float [n, N] of the stored (uint8) images
  at::Tensor patch_scores;     // float [n, P] last-layer CLS attention, dense forward
  at::Tensor keep_mask;        // uint8 [n, P] survivors of the configured pruning
  std::vector<double> losses;  // total loss at every iteration (of the iterate before its step)
  double best_loss = 0, final_loss = 0;
  int best_iteration = -1;
  double teacher_accuracy = 0;  // percent of stored images the teacher classifies as their label
  double seconds = 0;
};

// Retrieval instead of synthesis (invert --retrieve): which of M public images stand for a LoRA's N
// classes, given probs (float [M, N], the LoRA's softmax over them). A greedy matching: (image,
// label) pairs taken by descending probability, each image at most once, each label up to
// per_class times, so a label gets first the images the LoRA assigns to it most confidently.
// Returns M-row indices, class-interleaved like surrogates (entry k N + l: the k-th image of label
// l, the most probable first). Throws InputError when M < N per_class.
std::vector<int64_t> retrieve_rows(const at::Tensor& probs, int per_class);

// Fills out's teacher_logits, patch_scores, keep_mask and teacher_accuracy from out.images (uint8
// [n, S, S, 3]) and out.labels under the LoRA: what the pool stores beside each image.
void describe_images(const model::ClipVision& vit, const model::Lora& lora, const InversionConfig& cfg,
                     Surrogates& out);

// Another zoo LoRA whose task shares classes with the inverted one (InversionConfig::co_teachers):
// the batch rows it judges, their label in its own task, and each row's weight in the loss.
struct CoTeacher {
  model::Lora lora;
  at::Tensor rows;    // int64 [m]: rows of the inverted batch (class-interleaved)
  at::Tensor labels;  // int64 [m]: the rows' class as a column of this LoRA's head
  at::Tensor weight;  // float [m]: 1 / (batch size x co-teachers of the row's class)
};

// Inverts one LoRA. `prior` may be null (then the BN term is 0). Deterministic given cfg.seed.
// With a `progress_name`, logs the iterations with the loss terms and rate every 10 s (rank 0).
// With co-teachers, the loss adds cfg.w_co x sum over them of weight x their cross-entropy on
// their rows (the same augmented view as the own LoRA's). With a `student` (a LoRA without head,
// e.g. a meta-LoRA) and cfg.w_adv > 0, it adds cfg.w_adv x student_term of the student's features
// of the same view.
Surrogates invert_lora(const model::ClipVision& vit, const model::Lora& lora, const model::ResNet* prior,
                       const InversionConfig& cfg, std::uint64_t stream, const std::string& progress_name = {},
                       const std::vector<CoTeacher>& co_teachers = {}, const model::Lora* student = nullptr);

}  // namespace lorarec::invert
