// lorarecycle invert: the zoo sharded over ranks, every LoRA inverted into the surrogate pool.
#include <sstream>
#include <string>
#include <utility>

#include "cli/commands.h"
#include "cli/options.h"
#include "lorarecycle/dist/communicator.h"
#include "lorarecycle/dist/runtime.h"
#include "lorarecycle/invert/pool.h"
#include "lorarecycle/util/error.h"
#include "lorarecycle/util/log.h"

namespace lorarec::cli {

// "11:0.75,6:0.5" -> {(11, .75), (6, .5)}; "" or "none" -> {}.
std::vector<std::pair<int, double>> parse_prune(const std::string& spec) {
  std::vector<std::pair<int, double>> out;
  if (spec.empty() || spec == "none") return out;
  std::stringstream ss(spec);
  for (std::string item; std::getline(ss, item, ',');) {
    const auto colon = item.find(':');
    try {
      if (colon == std::string::npos) throw std::invalid_argument("no colon");
      out.emplace_back(std::stoi(item.substr(0, colon)), std::stod(item.substr(colon + 1)));
    } catch (const std::exception&) {
      throw InputError("--prune expects LAYER:RATIO[,LAYER:RATIO...], e.g. 3:0.75; got '" + spec + "'");
    }
  }
  return out;
}

namespace {
// The options' ranges and combinations, before any work (InputError naming the option).
void check_invert_options(const invert::InvertJobConfig& c) {
  if (c.inv.per_class < 1 || c.inv.iterations < 1)
    throw InputError("invert: --per-class and --iterations must be >= 1");
  if (!(c.inv.target_mix >= 0 && c.inv.target_mix <= 1)) throw InputError("invert: --target-mix must be in [0, 1]");
  if (c.inv.init_lowres == 1 || c.inv.init_lowres < 0)
    throw InputError("invert: --init-lowres must be 0 (off) or >= 2");
  if (!(c.inv.fourier >= 0 && c.inv.fourier <= 4)) throw InputError("invert: --fourier must be in [0, 4]");
  invert::check_strokes(c.inv, !c.init_images.empty());
  if (c.inv.co_teachers < 0) throw InputError("invert: --co-teachers must be >= 0");
  if (c.inv.white_border < 0) throw InputError("invert: --white-border must be >= 0");
  if (!c.retrieve.empty() && !c.real_images.empty())
    throw InputError("invert: --retrieve and --real-images are two ways of storing images without inverting; give one");
  if (!c.retrieve.empty() &&
      (!c.init_images.empty() || !c.feature_prior.empty() || !c.student.empty() || c.inv.co_teachers > 0))
    throw InputError(
        "invert: --retrieve stores public images without inverting: --init-images, --feature-prior, --student and "
        "--co-teachers have no effect with it");
  if (c.retrieve_candidates < 1) throw InputError("invert: --retrieve-candidates must be >= 1");
  if (c.inv.w_adv > 0 && c.student.empty())
    throw InputError("invert: --w-adv needs --student (the LoRA to invert against)");
  if (!c.student.empty() && !(c.inv.w_adv > 0))
    throw InputError("invert: --student needs --w-adv > 0 (the weight of the student term)");
  if (!(c.inv.adv_temperature > 0)) throw InputError("invert: --adv-temperature must be > 0");
  if (c.inv.w_adv > 0 && c.inv.per_class < 2)
    throw InputError("invert: --w-adv needs --per-class >= 2 (the student's prototypes leave each image out)");
  if (c.inv.feature_prior_samples < 1) throw InputError("invert: --feature-prior-samples must be >= 1");
  if (!(c.inv.zoom >= 0 && c.inv.zoom < 1)) throw InputError("invert: --zoom must be in [0, 1)");
  if (!(c.inv.affine >= 0 && c.inv.affine <= 4)) throw InputError("invert: --affine must be in [0, 4]");
  if (!(c.inv.stop_confidence >= 0 && c.inv.stop_confidence <= 1))
    throw InputError("invert: --stop-confidence must be in [0, 1]");
  if (!(c.inv.prune_start >= 0 && c.inv.prune_start <= 1)) throw InputError("invert: --prune-start must be in [0, 1]");
  for (const auto& [name, w] : {std::pair<const char*, double>{"--w-ce", c.inv.w_ce},
                                {"--w-bn", c.inv.w_bn},
                                {"--w-tv", c.inv.w_tv},
                                {"--w-l2", c.inv.w_l2},
                                {"--w-div", c.inv.w_div},
                                {"--w-co", c.inv.w_co},
                                {"--w-feat", c.inv.w_feat},
                                {"--w-adv", c.inv.w_adv}})
    if (!(w >= 0))
      throw InputError(std::string("invert: ") + name + " must be >= 0 (a loss weight), got " + std::to_string(w));
}
}  // namespace

int run_invert(int argc, char** argv, dist::Runtime& rt) {
  invert::InvertJobConfig c;
  std::string prune = "none";
  bool no_flip = false;
  int retrieve_per_class = 0;
  bool full_last = false;
  CommonOptions common;
  po::options_description desc = common_options(common);
  po::options_description own("Invert options");
  // One option per line:
  // clang-format off
  own.add_options()
      ("model", po::value(&c.model), "HF model directory of the VFM")
      ("zoo", po::value(&c.zoo), "zoo directory (manifest.json + lora_<k>/ PEFT directories with heads)")
      ("prior", po::value(&c.prior), "BN-prior ResNet (directory or .safetensors, torchvision names); omitted: no BN term")
      ("out", po::value(&c.out), "pool directory: lora_<k>.h5 per LoRA + index.json + summary.json")
      ("per-class", po::value(&c.inv.per_class)->default_value(c.inv.per_class), "surrogate images per class")
      ("iterations", po::value(&c.inv.iterations)->default_value(c.inv.iterations), "Adam iterations per LoRA (paper: 2000)")
      ("lr", po::value(&c.inv.lr)->default_value(c.inv.lr), "Adam learning rate on the pixels (betas 0.5, 0.99)")
      ("w-ce", po::value(&c.inv.w_ce)->default_value(c.inv.w_ce), "weight of the cross-entropy to the wanted class")
      ("w-bn", po::value(&c.inv.w_bn)->default_value(c.inv.w_bn), "weight of the BN-prior (DeepInversion) term")
      ("w-tv", po::value(&c.inv.w_tv)->default_value(c.inv.w_tv), "weight of the total variation")
      ("w-l2", po::value(&c.inv.w_l2)->default_value(c.inv.w_l2), "weight of ||X||")
      ("w-div", po::value(&c.inv.w_div)->default_value(c.inv.w_div), "weight of a diversity term: the mean cosine similarity between the teacher's features of two surrogates of the same class, so that a class's surrogates are not near-copies of one another (0: off)")
      ("jitter", po::value(&c.inv.jitter)->default_value(c.inv.jitter), "max random roll in pixels (-1: image_size / 8)")
      ("jitter-per-image", po::bool_switch(&c.inv.per_image), "draw the roll (and flip) for each image at every iteration instead of one shared by the whole batch (as the official code does): each surrogate is then pushed to be its class under its own views")
      ("target-mix", po::value(&c.inv.target_mix)->default_value(c.inv.target_mix), "give each surrogate its own target: a share u ~ U(0, M) of it on a second class of the LoRA (drawn once per image), the rest on its own class, so that a class's surrogates lean towards different neighbours as real images do; 0 = the one-hot target of the paper")
      ("zoom", po::value(&c.inv.zoom)->default_value(c.inv.zoom), "scale augmentation: every iteration the teacher also sees a random square crop of side s x image size, s ~ U(1 - Z, 1), resized back (one crop for the batch), so that a surrogate must be its class at several scales; 0 = off (the paper: roll and flip only)")
      ("affine", po::value(&c.inv.affine)->default_value(c.inv.affine), "every iteration the teacher also sees each image through its own random affine map of this strength (0 = off, at most 4; at 1 a rotation within +-10 degrees, scale 0.9-1.1, shear +-0.1 and a shift of up to 1/16 of the image per axis), white brought in from outside, after the roll, flip and --zoom: a surrogate must be its class under small rotations and shears, as glyphs of different fonts are")
      ("stop-confidence", po::value(&c.inv.stop_confidence)->default_value(c.inv.stop_confidence), "an image whose teacher probability of its class has reached P gets no cross-entropy gradient in that iteration, so it stops short of the class's mode instead of joining the others there; 0 = off (the paper: every image to CE 0)")
      ("white-border", po::value(&c.inv.white_border)->default_value(c.inv.white_border), "hold the outer PX pixels of every surrogate at white (pixel value 1) from the start and after every step, so that the class is drawn inside a margin, as dark-on-white data (glyphs, documents) has one; must be below half the image size; 0 = off (the paper)")
      ("init-lowres", po::value(&c.inv.init_lowres)->default_value(c.inv.init_lowres), "start each surrogate from noise drawn at R x R, 2R x 2R, 4R x 4R, .. (one size per image, at random) resized to the image size: smooth blobs of several sizes, which the VFM tells apart, instead of white noise, which it sees as one image; 0 = white noise (the paper)")
      ("fourier", po::value(&c.inv.fourier)->default_value(c.inv.fourier), "optimise each surrogate's spectrum instead of its pixels, frequency f scaled by 1 / |f|^D (the decorrelated parametrisation of feature visualisation): the same start, but Adam's steps move broad strokes more than single pixels, which pixel steps favour (high-frequency textures); after every step the image is clamped to valid pixels; D in [0, 4], 1 is the usual; 0 = pixels (the paper)")
      ("strokes", po::value(&c.inv.strokes)->default_value(c.inv.strokes), "draw each surrogate as K soft dark line segments on white and optimise their end points, widths (1-4 px) and ink instead of the pixels: a prior of line drawings (glyphs, sketches) that uses no image of the data; the roll and --white-border apply to the drawing; starts from K random segments per image (seeded); K in [0, 64]; 0 = pixels (the paper). Not with --fourier, --init-lowres or --init-images")
      ("init-images", po::value(&c.init_images), "start each surrogate from an image of this HDF5 set (drawn at random per image, seeded) instead of noise: a public set that holds none of the zoo's data, e.g. the VFM's pre-training images (the embedded benchmark: data/demo/base.h5, other scripts than the zoo's). The surrogates are then no longer data-free in the strict sense; overrides --init-lowres")
      ("co-teachers", po::value(&c.inv.co_teachers)->default_value(c.inv.co_teachers), "each surrogate of class c must also be c to up to M other zoo LoRAs whose tasks hold c (drawn per LoRA and class, seeded), each judging it among its own classes: a surrogate then carries what tells c from the classes of several tasks, not of its own LoRA's task only; costs up to (1 + M) x the forwards; 0 = its own LoRA only (the paper)")
      ("w-co", po::value(&c.inv.w_co)->default_value(c.inv.w_co), "weight of the co-teachers' cross-entropy (--co-teachers)")
      ("co-teacher-zoo", po::value(&c.co_teacher_zoo), "zoo directory the co-teachers come from (default: --zoo; a sub-zoo can take them from its full zoo)")
      ("feature-prior", po::value(&c.feature_prior), "a feature prior (DeepInversion's BN term on the ViT itself): the per-channel mean and variance of the residual stream entering every layer, over the batch's images and tokens, must match those of --feature-prior-samples images of this HDF5 set under the inverted LoRA (e.g. the VFM's pre-training images, the embedded benchmark's data/demo/base.h5: other scripts than the zoo's). Uses public data, as a BN prior's statistics do; off when not given")
      ("w-feat", po::value(&c.inv.w_feat)->default_value(c.inv.w_feat), "weight of the feature prior (--feature-prior)")
      ("feature-prior-samples", po::value(&c.inv.feature_prior_samples)->default_value(c.inv.feature_prior_samples), "images of --feature-prior the statistics are taken over (drawn per LoRA, seeded)")
      ("student", po::value(&c.student), "a LoRA adapter directory without head (e.g. a meta-LoRA, or lora-avg written by metatrain --init zoo-mean) to invert against: with --w-adv > 0 every surrogate is also pushed away from what this student's prototype classifier takes for its class (the batch's other images of each class as prototypes) while the teacher keeps it in its class: adversarial inversion, so that the surrogates ask the zoo about the student's mistakes. Costs a second forward and backward per iteration")
      ("w-adv", po::value(&c.inv.w_adv)->default_value(c.inv.w_adv), "weight of the student term against --student: -log(1 - the student's prototype probability of the image's class), averaged over the batch; 0 = off (the paper)")
      ("adv-temperature", po::value(&c.inv.adv_temperature)->default_value(c.inv.adv_temperature), "the student's prototype logits are -squared distance / T (as metatrain --temperature)")
      ("no-flip", po::bool_switch(&no_flip), "no random horizontal flip of the batch (set it for data that is not mirror-symmetric: glyphs, text; the embedded benchmark's configs do)")
      ("gray", po::bool_switch(&c.inv.gray), "optimise one grey channel shared by R, G and B (for greyscale domains: glyphs, X-rays); the surrogates are then grey like the data")
      ("prune", po::value(&prune)->default_value(prune), "token pruning LAYER:RATIO,... (0-based layers; e.g. 3:0.75) or none")
      ("prune-start", po::value(&c.inv.prune_start)->default_value(c.inv.prune_start), "fraction of the iterations after which pruning is on")
      ("seed", po::value(&c.inv.seed)->default_value(c.inv.seed), "seed of the noise and the jitter")
      ("full-last-layer", po::bool_switch(&full_last), "run the whole last layer as the official code does (benchmarking; the default computes CLS only)")
      ("restart", po::bool_switch(&c.restart), "discard the pool files an earlier run left in --out and invert every LoRA anew (without it, finished files are reused when their recorded settings equal today's, and the run is refused otherwise)")
      ("preview", po::bool_switch(&c.preview), "write lora_<k>.png contact sheets of the surrogates")
      ("retrieve", po::value(&c.retrieve), "retrieval instead of synthesis: store, in place of each LoRA's surrogates, the --per-class images of this public HDF5 set (none of the zoo's data, e.g. the VFM's pre-training images: data/demo/base.h5 in the embedded benchmark) that the LoRA assigns to each of its classes most confidently, each image used once per LoRA (a greedy matching by the LoRA's probabilities); same pool layout, with the LoRA's logits and scores. Uses public data, not the zoo's; nothing is inverted")
      ("retrieve-per-class", po::value(&retrieve_per_class)->default_value(0), "with --retrieve: images stored per class in place of --per-class (0 = --per-class), so that one config can invert a few surrogates per class and retrieve many public images (the embedded benchmark's main job: 4 surrogates, 100 retrieved glyphs per class); ignored without --retrieve")
      ("retrieve-candidates", po::value(&c.retrieve_candidates)->default_value(c.retrieve_candidates), "images of --retrieve each LoRA scores, drawn per LoRA (seeded by --seed and the LoRA); all of them when the set is smaller")
      ("real-images", po::value(&c.real_images), "control experiment: instead of inverting, store --per-class REAL images of each LoRA's classes from this HDF5 set (the zoo's --data), in the same pool layout with the LoRA's logits and scores; the LoRAs covering one class get disjoint images while the class has enough");
  // clang-format on
  desc.add(own);
  if (!parse("invert", "usage: lorarecycle invert --model DIR --zoo ZOO_DIR --out POOL_DIR [--prior DIR] [options]",
             argc, argv, desc, common, rt.rank()))
    return 0;
  c.inv.flip = !no_flip;
  c.inv.cls_only_last = !full_last;
  c.inv.prune = parse_prune(prune);
  if (retrieve_per_class < 0) throw InputError("invert: --retrieve-per-class must be >= 0 (0 = --per-class)");
  if (!c.retrieve.empty() && retrieve_per_class > 0) c.inv.per_class = retrieve_per_class;
  check_invert_options(c);
  RunContext ctx = start("invert", rt, common, true);
  c.precision = ctx.precision;
  invert::run_invert(c, *ctx.comm, ctx.device);
  return 0;
}

}  // namespace lorarec::cli
