// lorarecycle metatrain: data-parallel meta-training of the meta-LoRA on the surrogate pool.
#include "lorarecycle/train/metatrain.h"

#include <sstream>

#include "cli/commands.h"
#include "cli/options.h"
#include "lorarecycle/dist/communicator.h"
#include "lorarecycle/dist/runtime.h"
#include "lorarecycle/util/error.h"
#include "lorarecycle/util/log.h"

namespace lorarec::cli {

namespace {

// --prefetch (auto | on | off) with --no-prefetch folded in.
std::string checked_prefetch(const std::string& prefetch, bool no_prefetch) {
  if (prefetch != "auto" && prefetch != "on" && prefetch != "off")
    throw InputError("metatrain: --prefetch must be auto, on or off, got '" + prefetch + "'");
  if (no_prefetch && prefetch == "on")
    throw InputError("metatrain: --no-prefetch and --prefetch on contradict each other");
  return no_prefetch ? "off" : prefetch;
}

// --prefetch on / off as asked; auto: on for a GPU, or when this rank has a CPU beyond its compute
// threads. Logs the choice and why.
bool decide_prefetch(const std::string& prefetch, const c10::Device& device, const dist::Runtime& rt) {
  const int cpus = rt.cpus_for_rank();
  const bool on = prefetch == "on" || (prefetch == "auto" && (device.is_cuda() || cpus > rt.threads()));
  LOG_INFO("metatrain",
           "prefetch " << (on ? "on" : "off")
                       << (prefetch != "auto" ? " (asked for)"
                           : device.is_cuda() ? " (auto: GPU)"
                                              : " (auto: " + std::to_string(cpus) + " CPU(s) for this rank's " +
                                                    std::to_string(rt.threads()) + " compute thread(s))"));
  return on;
}

// --data-threads (train::resolve_data_threads); logged on a GPU, where the auto choice is more than one.
int decide_data_threads(int asked, const c10::Device& device, const dist::Runtime& rt) {
  const int n = train::resolve_data_threads(asked, device, rt.cpus_for_rank());
  if (device.is_cuda())
    LOG_INFO("metatrain", "data threads " << n << (asked > 0 ? " (asked for)" : " (auto)") << "; " << rt.cpus_for_rank()
                                          << " CPU(s) for this rank");
  return n;
}

// What the command line sets beside MetaTrainConfig's own fields.
struct MetaTrainCli {
  std::string targets = "q_proj,v_proj", layers;
  bool no_flip = false, no_prefetch = false;
  std::string prefetch = "auto";
  int data_threads = 0;
};

// The options of `lorarecycle metatrain`, bound to c and x.
po::options_description metatrain_options(train::MetaTrainConfig& c, MetaTrainCli& x) {
  po::options_description own("Meta-training options");
  // One option per line:
  // clang-format off
  own.add_options()
      ("model", po::value(&c.model), "HF model directory of the VFM (frozen)")
      ("pool", po::value(&c.pool), "surrogate pool directory written by `lorarecycle invert` (index.json + lora_<k>.h5)")
      ("val", po::value(&c.val), "HDF5 image set of the validation classes (real images, e.g. data/demo/val.h5); empty: no validation")
      ("out", po::value(&c.out), "output PEFT adapter directory of the meta-LoRA (+ metatrain.json, the report)")
      ("work", po::value(&c.work), "checkpoint and metrics directory (default: <out>.work)")
      ("way", po::value(&c.spec.n_way)->default_value(c.spec.n_way), "N: classes per training episode")
      ("shot", po::value(&c.spec.k_shot)->default_value(c.spec.k_shot), "K: support images per class")
      ("query", po::value(&c.spec.q_query)->default_value(c.spec.q_query), "Q: query images per class (K+Q <= images per class in the pool)")
      ("steps", po::value(&c.steps)->default_value(c.steps), "optimizer steps (episodes = steps x episodes-per-step; paper: 240,000 episodes)")
      ("episodes-per-step", po::value(&c.episodes_per_step)->default_value(c.episodes_per_step), "global episodes per step, split over ranks (multiple of the world size; 0 = one per rank). Fix it to make runs independent of the world size")
      ("lr", po::value(&c.lr)->default_value(c.lr), "peak Adam learning rate")
      ("lr-min", po::value(&c.lr_min)->default_value(c.lr_min), "learning rate at the start and end of each cycle")
      ("cycle", po::value(&c.cycle)->default_value(c.cycle), "steps per warm-up + cosine cycle (official: 100); 0 = one cycle over the whole run")
      ("warmup", po::value(&c.warmup)->default_value(c.warmup), "linear warm-up steps at the start of each cycle (official: 25)")
      ("clip-norm", po::value(&c.clip_norm)->default_value(c.clip_norm), "gradient-norm clip (0 = off)")
      ("rank", po::value(&c.lora.r)->default_value(c.lora.r), "meta-LoRA rank r")
      ("alpha", po::value(&c.lora.alpha)->default_value(c.lora.alpha), "lora_alpha (scale = alpha / r)")
      ("init", po::value(&c.init)->default_value(c.init), "meta-LoRA start: fresh (A random, B zero: the paper), zoo-mean (the best rank-r approximation, by SVD, of the mean weight delta of the LoRAs the pool was inverted from: meta-training starts from the zoo's average, lora-avg, and must then improve on it; needs the zoo's --targets; above the mean's rank the extra components start fresh, A random and B zero, so that they train) or a PEFT adapter directory (its best rank-r approximation: e.g. a lora-avg or meta-LoRA written earlier, tuned on the same --model; the adapter's files enter the run's fingerprint, so a resumed run needs the directory unchanged)")
      ("init-partial", po::bool_switch(&c.init_partial), "with --init zoo-mean or an adapter directory: let the meta-LoRA adapt modules (--targets) and layers (--layers) that the start does not (else refused, exit 2); those start fresh (A random, B zero), so the run still starts exactly at the start's function, with more room to move from it (e.g. a meta-LoRA on every projection and MLP layer from a zoo tuned on q and v). Recorded in the fingerprint; excludes --scales-only")
      ("scales-only", po::bool_switch(&c.scales_only), "train one scale per rank-1 component of the meta-LoRA (B diag(s) A, s from 1) with A and B frozen where --init zoo-mean put them (the top --rank singular directions of the zoo's mean delta), instead of A and B: the scales multiply its singular values. At full rank (--rank = the model's width) the run starts exactly at lora-avg and can only re-weight its directions. The written meta-LoRA has the scales folded into B; a resumed run rebuilds A and B from the zoo's files")
      ("targets", po::value(&x.targets)->default_value(x.targets), "comma-separated target modules (q_proj,k_proj,v_proj,out_proj,fc1,fc2)")
      ("layers", po::value(&x.layers)->default_value(x.layers), "comma-separated encoder layers (from 0) that get the meta-LoRA, e.g. 2,3 (PEFT's layers_to_transform); empty = every layer. The others run the bare VFM")
      ("mask-ratio", po::value(&c.mask_ratio)->default_value(c.mask_ratio), "sparse tokens: feed each surrogate with its top-(1-x) patches by stored CLS-attention score (+ CLS); 0 = dense")
      ("no-flip", po::bool_switch(&x.no_flip), "no random horizontal flip of the surrogates (set it for data that is not mirror-symmetric: glyphs, text; the embedded benchmark's configs do)")
      ("jitter", po::value(&c.jitter)->default_value(c.jitter), "random roll of each training image by up to this many pixels on both axes (0 = off): the jitter the surrogates were inverted under. With --distill-weight the teacher's features are those of the unshifted image")
      ("affine", po::value(&c.affine)->default_value(c.affine), "random affine map of each training image, this strength (0 = off, at most 4): at 1 a rotation within +-10 degrees, scale 0.9-1.1, shear +-0.1 and a shift of up to 1/16 of the image on each axis, drawn per image and step; what comes in from outside the image is white (for dark-on-white images such as the glyph benchmark's). With a mask ratio it needs --mask-select random. The teachers' logits and features (--distill-weight) are those of the unmapped image")
      ("compose", po::value(&c.compose)->default_value(c.compose), "share of the multi-LoRA episodes (0 = off, at most 1) whose N classes are each composed of two real classes of the pool: every image of such a class is an image of the first with the part past a cut (the right of a vertical cut or the bottom of a horizontal one, at 3/8 to 5/8 of the side) taken from an image of the second; cut and second class drawn per class and step, so the images of a class share them, as characters built from the same two components do. More classes than the pool holds (task augmentation). Not with --mask-select top or with the episodes' own distillation (no stored teacher output describes a composed image)")
      ("compose-partner", po::value(&c.compose_partner)->default_value(c.compose_partner), "with --compose: where a composed image's part past the cut comes from: other (an image of a second class, drawn per class: a new class) or same (another image of the image's own class, drawn per image with its own cut: the class stays itself, its images mixed from two of its images, in a pool by real class mostly of two teachers)")
      ("gray", po::bool_switch(&c.gray), "average each surrogate's colour channels (when the real images are grey, as in the embedded benchmark)")
      ("disjoint-teachers", po::bool_switch(&c.disjoint_teachers), "in episodes over real classes, take the support images of a class from one LoRA and its queries from the other LoRAs that cover it (never a query from the support's teacher; needs a zoo that covers each class twice or more)")
      ("hard-classes", po::value(&c.hard_classes)->default_value(c.hard_classes), "harder episodes: an episode over real classes takes its first class at random and the other N - 1 among the M classes whose prototypes (mean bare-VFM feature of their pool images) lie nearest to it; M in [N - 1, classes - 1]; 0 = off (classes uniformly at random, the paper)")
      ("single-lora-prob", po::value(&c.single_lora_prob)->default_value(c.single_lora_prob), "share of episodes whose classes all come from one LoRA; they add the KL term to its stored teacher logits")
      ("kl-weight", po::value(&c.kl_weight)->default_value(c.kl_weight), "weight of that KL term (0 = CE only)")
      ("distill-weight", po::value(&c.distill_weight)->default_value(c.distill_weight), "weight of a feature distillation (mean squared difference) from each surrogate image's own zoo LoRA (read from the pool file's lora_path) to the meta-LoRA; 0 = off (the paper)")
      ("mask-select", po::value(&c.mask_select)->default_value(c.mask_select), "with --mask-ratio, which patches are kept: top (the highest stored CLS-attention scores, the paper's) | random (each image has --mask-variants fixed random subsets; each step feeds one drawn at random, and distillation targets are computed for each)")
      ("mask-variants", po::value(&c.mask_variants)->default_value(c.mask_variants), "with --mask-select random: fixed random patch subsets per image (the teacher features are precomputed for each: V x the images' forwards at start-up)")
      ("distill-pool", po::value(&c.distill_pool), "a second pool directory (written by invert, e.g. invert --retrieve: public images each LoRA assigns to its classes) whose images carry a distillation term: each step, every episode adds the mean squared difference between the meta-LoRA's features and their targets on --distill-images of them (whole images, unflipped, drawn seeded). The targets are each image's own LoRA's features, or as --distill-targets sets (the start's, or the zoo's). Its weight is --distill-weight, and then it replaces the episodes' own-LoRA distillation, or --distill-pool-weight, and then both run; the episodes keep the episodic objective. With --align-weight its images carry the alignment term too (or alone, at --distill-weight 0). Off when not given")
      ("align-weight", po::value(&c.align_weight)->default_value(c.align_weight), "weight of a feature-statistics alignment between the episodes' images and --distill-pool's (public) images, both under the meta-LoRA: per episode, (|mean difference|^2 + |standard deviation difference|^2) of the features per dimension over the mean squared norm of the public images' features, so that what the episodes teach on surrogates holds where real-looking images lie. Needs --distill-pool; --distill-weight may then be 0. 0 = off")
      ("distill-pool-weight", po::value(&c.distill_pool_weight)->default_value(c.distill_pool_weight), "weight of --distill-pool's distillation term. Unset (-1): --distill-weight, and the pool's term replaces the episodes' own-LoRA distillation. Given (>= 0): this weight, and --distill-weight keeps distilling each episode image's own LoRA, so both run in one step (e.g. the main recipe plus an anchor, --distill-targets start)")
      ("distill-targets", po::value(&c.distill_targets)->default_value(c.distill_targets), "whose features --distill-pool's term distils into the meta-LoRA: own (each image's own LoRA, named by its pool file) | start (the meta-LoRA's start: the bare VFM, or what --init sets, i.e. the zoo's mean or the adapter cut to --rank; an anchor that keeps the start's features on those images: learning without forgetting) | zoo-mean (the mean of the image's features under every LoRA that --distill-pool's files name: the zoo's feature ensemble) | zoo-concat (the zoo's features concatenated, which carry its ensemble's geometry, as 128-d targets: cut to the model's width by their principal components over --distill-pool's images and turned and scaled (orthogonal Procrustes) onto the zoo's mean features, so that a run from lora-avg starts near them; their distances are the concatenation's. Costs an eigendecomposition of the smaller of (LoRAs x width)^2 and rows^2 doubles at the start) | zoo (no feature targets: the squared distances between an episode's --distill-pool images are matched to the zoo's, their mean over those LoRAs, which is the geometry of the LoRAs' features concatenated; the term is the mean over pairs of the squared difference over the zoo's mean distance. Holds rows x LoRAs x D floats)")
      ("distill-zoo-softmax", po::value(&c.distill_zoo_softmax)->default_value(c.distill_zoo_softmax), "with --distill-targets zoo: 0 matches the pairwise distances by squared error; R > 0 matches each image's softmax over the episode's other --distill-pool images, of -d / (R x the mean d), to the zoo's by KL divergence (each side scaled by its own mean distance): the near neighbours, where prototypes decide, weigh most")
      ("distill-images", po::value(&c.distill_images)->default_value(c.distill_images), "images of --distill-pool per episode and step (0: as many as an episode holds, N (K + Q))")
      ("distill-mask-ratio", po::value(&c.distill_mask_ratio)->default_value(c.distill_mask_ratio), "share of each --distill-pool image's patches the meta-LoRA does not see in that term: each step a random (1 - x) of them (drawn per image and step) and the CLS token go forward, while the targets stay those of the whole image; a cheaper forward, so that more images fit a step's time (0 = whole images)")
      ("distill-dense", po::bool_switch(&c.distill_dense), "with --mask-ratio and --distill-weight: distil the teacher's features of the whole surrogate (every patch) into the student's features of the kept patches, instead of the teacher's features of the same kept patches; the meta-LoRA is used on whole images")
      ("temperature", po::value(&c.temperature)->default_value(c.temperature), "training logits = -squared Euclidean distance / T (paper: 1); prediction (argmin distance) does not depend on it")
      ("val-every", po::value(&c.val_every)->default_value(c.val_every), "steps between validations (also at the start and the end; 0 = only those)")
      ("keep", po::value(&c.keep)->default_value(c.keep), "the meta-LoRA written to --out: last (the one after --steps) | best (the one of the validation with the highest mean accuracy, step 0 included, earliest on a tie: early stopping on the validation classes; needs --val). Both are tracked in every run, and metatrain.json names the step kept")
      ("val-episodes", po::value(&c.val_episodes)->default_value(c.val_episodes), "fixed, seeded validation episodes")
      ("val-way", po::value(&c.val_spec.n_way)->default_value(c.val_spec.n_way), "validation episodes: N")
      ("val-shot", po::value(&c.val_spec.k_shot)->default_value(c.val_spec.k_shot), "validation episodes: K")
      ("val-query", po::value(&c.val_spec.q_query)->default_value(c.val_spec.q_query), "validation episodes: Q")
      ("checkpoint-every", po::value(&c.checkpoint_every)->default_value(c.checkpoint_every), "steps between checkpoints (also at the end and on SIGTERM/SIGUSR1)")
      ("hash-every", po::value(&c.hash_every)->default_value(c.hash_every), "steps between replica checks (hash of the meta-LoRA gathered from every rank; 0 = only at the end)")
      ("log-every", po::value(&c.log_every)->default_value(c.log_every), "steps between metrics lines")
      ("cache-mb", po::value(&c.cache_mb)->default_value(c.cache_mb), "hold the pool's images in memory when they fit in this many MiB; else read them from HDF5 per episode")
      ("max-bad-steps", po::value(&c.max_bad_steps)->default_value(c.max_bad_steps), "abort after this many consecutive steps with a non-finite loss or gradient (each is skipped)")
      ("host-sync", po::value(&c.host_sync)->default_value(c.host_sync), "when the host reads a step's results (loss, accuracy, the finite check, the stop flag): step (after every step) | log (every --log-every steps and at checkpoints: the finite check, clipping and a skipped update stay on the device, so a GPU step never waits for the host; --max-bad-steps and a stop signal are acted on at those reads) | auto (log on GPUs, step on CPUs)")
      ("sync-timing", po::bool_switch(&c.sync_timing), "measuring: a barrier before each all-reduce, so the report separates waiting for the slowest rank (imbalance_wait_share) from the all-reduce itself")
      ("prefetch", po::value(&x.prefetch)->default_value(x.prefetch), "prepare the next steps' batches on a second thread: on | off | auto (on a GPU, or when this rank has a CPU to spare beside its compute threads; off when every CPU runs a rank, where the thread would take time from the compute). The choice is logged")
      ("no-prefetch", po::bool_switch(&x.no_prefetch), "the same as --prefetch off")
      ("data-threads", po::value(&x.data_threads)->default_value(x.data_threads), "threads that copy a step's images, flips in the same pass (a GPU step's into page-locked memory; 0 = auto: on a GPU the rank's CPUs beside its training thread, 1 to 8, on a CPU 1). The choice is logged on a GPU")
      ("seed", po::value(&c.seed)->default_value(c.seed), "seed of the meta-LoRA, the episodes and the augmentation")
      ("resume", po::bool_switch(&c.resume), "continue from the checkpoint in the work directory (none there: start fresh)")
      ("restart", po::bool_switch(&c.restart), "discard an existing checkpoint and metrics and start over")
      ("stop-after", po::value(&c.stop_after)->default_value(c.stop_after), "checkpoint and exit (status 75) after this many steps of this run (0 = run to the end)");
  // clang-format on
  return own;
}

}  // namespace

int run_metatrain(int argc, char** argv, dist::Runtime& rt) {
  train::MetaTrainConfig c;
  MetaTrainCli x;
  CommonOptions common;
  po::options_description desc = common_options(common);
  desc.add(metatrain_options(c, x));
  if (!parse(
          "metatrain",
          "usage: lorarecycle metatrain --model DIR --pool POOL_DIR --out DIR [--val val.h5] [options]\n"
          "Exit status: 0 finished, 75 stopped early with a checkpoint (signal or --stop-after; rerun with --resume),\n"
          "2 bad input, 1 runtime failure.",
          argc, argv, desc, common, rt.rank()))
    return 0;
  c.lora.target_modules = parse_modules(x.targets);
  c.lora.layers = parse_layers(x.layers, "metatrain --layers");
  c.flip = !x.no_flip;
  const std::string prefetch = checked_prefetch(x.prefetch, x.no_prefetch);
  c.validate();
  RunContext ctx = start("metatrain", rt, common, true);
  c.precision = ctx.precision;
  c.prefetch = decide_prefetch(prefetch, ctx.device, rt);
  c.data_threads = decide_data_threads(x.data_threads, ctx.device, rt);
  const auto r = train::run_metatrain(c, *ctx.comm, ctx.device);
  return r.finished ? 0 : kExitCheckpointed;
}

}  // namespace lorarec::cli
