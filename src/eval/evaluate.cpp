#include "lorarecycle/eval/evaluate.h"

#include "result_cache.h"
#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>

#include "lorarecycle/data/image_set.h"
#include "lorarecycle/data/zoo_manifest.h"
#include "lorarecycle/dist/communicator.h"
#include "lorarecycle/eval/methods.h"
#include "lorarecycle/io/safetensors.h"
#include "lorarecycle/model/peft.h"
#include "lorarecycle/optim/optim.h"
#include "lorarecycle/util/env.h"
#include "lorarecycle/util/error.h"
#include "lorarecycle/util/fs.h"
#include "lorarecycle/util/log.h"
#include "lorarecycle/util/progress.h"
#include "lorarecycle/util/provenance.h"

namespace lorarec::eval {
namespace {
using json = nlohmann::json;
namespace stdfs = std::filesystem;
using Clock = std::chrono::steady_clock;

double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

double slowest(double seconds, dist::Communicator& comm) {
  double m = 0;
  for (double s : comm.all_gather_f64(seconds)) m = std::max(m, s);
  return m;
}

}  // namespace

void EvalConfig::validate() const {
  if (model.empty()) throw InputError("eval: --model is required");
  if (data.empty()) throw InputError("eval: at least one --data set is required");
  if (way < 2 || query < 1) throw InputError("eval: need --way >= 2 and --query >= 1");
  if (shots.empty()) throw InputError("eval: --shots is empty");
  for (int s : shots)
    if (s < 1) throw InputError("eval: --shots must be positive");
  if (episodes < 1 || ft_episodes < 0 || timing_episodes < 0)
    throw InputError("eval: need --episodes >= 1, --ft-episodes >= 0, --timing-episodes >= 0");
  if (ft_steps < 0 || !(ft_lr > 0)) throw InputError("eval: need --ft-steps >= 0 and --ft-lr > 0");
  for (const auto& m : methods)
    if (find_method(m) == nullptr) throw InputError("eval: unknown method '" + m + "' (" + method_names() + ")");
  if (hub_episodes < 0 || hub.budget < 1 || !(hub.l1 >= 0) || !(hub.sigma > 0) || !(hub.bound > 0))
    throw InputError(
        "eval: need --hub-episodes >= 0, --hub-budget >= 1, --hub-l1 >= 0, --hub-sigma > 0, --hub-bound > 0");
  for (const MethodSpec& m : method_table()) {
    if (methods.empty() || !method_wanted(m, *this)) continue;
    if (m.needs == Needs::kZoo && zoo.empty()) throw InputError("eval: method " + std::string(m.name) + " needs --zoo");
    if (m.needs == Needs::kMeta && meta.empty())
      throw InputError("eval: method " + std::string(m.name) + " needs --meta");
  }
  // Rows are keyed (result cache, paired differences) by dataset and method name: each must be unique.
  std::set<std::string> seen;
  for (const auto& d : data) {
    const std::string name = split_data(d).first;
    if (!seen.insert(name).second)
      throw InputError("eval: two --data sets are named '" + name + "' (name them: NAME=path.h5)");
  }
  seen.clear();
  for (const auto& m : meta) {
    const std::string name = split_meta(m, meta.size()).first;
    if (find_method(name) != nullptr && name != "meta")
      throw InputError("eval: --meta '" + m + "' is named '" + name + "', the name of a method (name it: NAME=dir)");
    if (!seen.insert(name).second)
      throw InputError("eval: two --meta adapters are named '" + name + "' (name them: NAME=dir)");
  }
}

std::pair<std::string, std::string> split_named(const std::string& spec, const std::string& default_name) {
  const auto eq = spec.find('=');
  if (eq != std::string::npos && eq > 0) return {spec.substr(0, eq), spec.substr(eq + 1)};
  return {default_name, spec};
}

std::pair<std::string, std::string> split_data(const std::string& spec) {
  return split_named(spec, std::filesystem::path(spec).stem().string());
}

std::pair<std::string, std::string> split_meta(const std::string& spec, size_t count) {
  return split_named(spec, count == 1 ? "meta" : std::filesystem::path(spec).filename().string());
}

double finetune_episode(const model::ClipVision& vit, const at::Tensor& support_px, const at::Tensor& query_px, int way,
                        int shot, const model::LoraConfig& lora_cfg, int steps, double lr, std::uint64_t seed) {
  model::Lora ft(vit.config(), lora_cfg, seed);
  ft.to(vit.device());
  const at::Tensor y = data::episode_labels(way, shot).to(vit.device());
  {
    // Head = the prototype classifier: logits 2 f.p - |p|^2 (= -|f - p|^2 up to a per-query constant).
    at::NoGradGuard ng;
    const at::Tensor f = vit.forward(support_px).feature;
    const at::Tensor p = fewshot::episode_prototypes(f, way, shot);
    ft.set_head((2.0 * p).contiguous(), (-p.pow(2).sum(-1)).contiguous());
  }
  ft.set_requires_grad(true, true);
  optim::AdamW opt(ft.parameters(true), optim::AdamWConfig{});
  for (int s = 0; s < steps; ++s) {
    const at::Tensor loss = at::cross_entropy_loss(ft.head(vit.forward(support_px, {}, &ft).feature), y);
    opt.zero_grad();
    loss.backward();
    opt.step(lr);
  }
  at::NoGradGuard ng;
  const int q = static_cast<int>(query_px.size(0) / way);
  const at::Tensor pred = ft.head(vit.forward(query_px, {}, &ft).feature).argmax(-1);
  return 100.0 * pred.eq(data::episode_labels(way, q).to(pred.device())).to(at::kDouble).mean().item<double>();
}

void add_paired(std::vector<EvalRow>& rows) {
  const auto same_task = [](const EvalRow& a, const EvalRow& b) {
    return a.dataset == b.dataset && a.way == b.way && a.shot == b.shot && a.query == b.query;
  };
  for (EvalRow& r : rows) {
    r.ref.clear();
    r.vs_ref = {};
    if (r.acc.values.empty() || r.method == kPairedRefs[1]) continue;
    const EvalRow* ref = nullptr;
    for (const char* name : kPairedRefs) {
      if (r.method == name) continue;
      for (const EvalRow& o : rows)
        if (o.method == name && same_task(o, r)) {
          ref = &o;
          break;
        }
      if (ref != nullptr) break;
    }
    if (ref == nullptr || ref->acc.values.empty()) continue;  // the reference's episodes unknown: no pairing
    r.ref = ref->method;
    r.vs_ref = fewshot::paired_difference(r.acc.values, ref->acc.values);
  }
}

std::string format_table(const std::vector<EvalRow>& rows) {
  std::ostringstream os;
  char buf[320];
  std::snprintf(buf, sizeof buf, "%-14s %-16s %-10s %-18s %10s  %s\n", "dataset", "method", "setting",
                "accuracy % (95% CI)", "tasks/s", "paired difference (95% CI), same episodes");
  os << buf;
  for (const auto& r : rows) {
    char setting[32], acc[48], paired[96] = "";
    std::snprintf(setting, sizeof setting, "%dw%ds", r.way, r.shot);
    std::snprintf(acc, sizeof acc, "%6.2f +- %4.2f", r.acc.mean, r.acc.ci95);
    if (!r.ref.empty())
      std::snprintf(paired, sizeof paired, "%+6.2f +- %4.2f vs %s", r.vs_ref.mean, r.vs_ref.ci95, r.ref.c_str());
    std::snprintf(buf, sizeof buf, "%-14s %-16s %-10s %-18s %10.2f  %s\n", r.dataset.c_str(), r.method.c_str(), setting,
                  acc, r.tasks_per_s, paired);
    os << buf;
  }
  return os.str();
}

namespace {

// What one evaluation run shares across datasets and methods.
struct Run {
  const EvalConfig& cfg;
  dist::Communicator& comm;
  const model::ClipVision& vit;
  ResultCache& cache;
  std::vector<EvalRow> rows;
  int reused = 0;
};

// An input of the results (results.json "inputs"), by content digest: `lorarecycle verify`
// compares them with the files.
json input_json(const std::string& path, const std::string& digest) {
  return json{
      {"path", path}, {"absolute path", stdfs::absolute(path).lexically_normal().string()}, {"content digest", digest}};
}

// The zoo's LoRAs, read once when a method that needs them runs, and their files' identity.
struct ZooLoras {
  std::vector<model::Lora> loras;
  std::string source;
  std::vector<std::string> dirs;
};
ZooLoras load_zoo(const EvalConfig& cfg, const model::ClipVision& vit) {
  ZooLoras z;
  bool needed = false;
  for (const MethodSpec& m : method_table()) needed |= m.needs == Needs::kZoo && method_wanted(m, cfg);
  if (!needed || cfg.zoo.empty()) return z;
  for (const std::string& dir : data::ZooManifest::read(cfg.zoo).lora_dirs()) {
    z.loras.push_back(model::load_peft(dir, vit.config(), cfg.model));
    z.source += fingerprint(dir);
    z.dirs.push_back(dir);
  }
  return z;
}

// The settings every cached result depends on.
json eval_settings(const EvalConfig& cfg, const c10::Device& device) {
  std::vector<std::string> targets;
  for (auto t : cfg.ft_lora.target_modules) targets.push_back(model::module_name(t));
  json settings = {{"model", cfg.model},
                   {"model_files", fingerprint(cfg.model)},
                   {"seed", cfg.seed},
                   {"way", cfg.way},
                   {"query", cfg.query},
                   {"episodes", cfg.episodes},
                   {"timing_episodes", cfg.timing_episodes},
                   {"ft_episodes", cfg.ft_episodes},
                   {"ft_steps", cfg.ft_steps},
                   {"ft_lr", cfg.ft_lr},
                   {"ft_rank", cfg.ft_lora.r},
                   {"ft_alpha", cfg.ft_lora.alpha},
                   {"ft_targets", targets},
                   {"device", device.str()}};
  // Only bf16 is recorded: fp32 partial results of runs before the option existed stay valid.
  if (cfg.precision != model::Precision::kFp32) settings["precision"] = model::precision_name(cfg.precision);
  return settings;
}

// Throughput as a user sees it: the first T tasks' own images through the network, then
// prototypes, split over ranks. Seconds of the slowest rank.
double time_tasks(const Run& run, const model::Lora* lora, const data::ImageSet& set, const data::EpisodeSpec& spec,
                  int T) {
  const data::EpisodeSampler sampler(set, spec);
  run.comm.barrier();
  const auto t0 = Clock::now();
  at::NoGradGuard ng;
  for (int i = run.comm.rank(); i < T; i += run.comm.size()) {
    auto rng = data::make_rng(run.cfg.seed, 0, static_cast<std::uint64_t>(i));
    const data::Episode e = sampler.sample(rng);
    std::vector<int64_t> all = e.support;
    all.insert(all.end(), e.query.begin(), e.query.end());
    const at::Tensor f = run.vit.forward(run.vit.preprocess(set.gather(all)), {}, lora).feature;
    const int ns = spec.n_way * spec.k_shot;
    (void)fewshot::prototype_logits(f.narrow(0, 0, ns), f.narrow(0, ns, f.size(0) - ns), spec.n_way, spec.k_shot)
        .argmax(-1)
        .cpu();
  }
  return slowest(since(t0), run.comm);
}

// A kFixed method on one dataset: every image embedded once, every shot's episodes scored by
// prototypes over those features; rows in --shots order, cached rows reused.
void eval_fixed(Run& run, const std::string& dname, const data::ImageSet& set, const std::string& dsource,
                const MethodInstance& m) {
  const EvalConfig& cfg = run.cfg;
  const auto key = [&](int shot) { return dname + "__" + m.name + "__" + std::to_string(shot); };
  const std::string source = dsource + "|" + m.source;
  std::map<int, EvalRow> by_shot;
  std::vector<int> todo;
  for (int shot : cfg.shots) {
    if (auto r = run.cache.row(key(shot), source)) {
      by_shot[shot] = *r;
      ++run.reused;
    } else {
      todo.push_back(shot);
    }
  }
  const at::Tensor feats =
      todo.empty() ? at::Tensor() : fewshot::embed_all(run.vit, m.lora.get(), set, run.comm, cfg.batch_size);
  for (int shot : todo) {
    const data::EpisodeSpec spec{cfg.way, shot, cfg.query};
    EvalRow r;
    r.dataset = dname, r.method = m.name, r.way = cfg.way, r.shot = shot, r.query = cfg.query;
    r.acc = fewshot::evaluate_prototypes(feats, set, spec, cfg.episodes, cfg.seed, run.comm);
    const int T = std::min(cfg.episodes, cfg.timing_episodes);
    const double secs = time_tasks(run, m.lora.get(), set, spec, T);
    r.timed_tasks = T;
    r.tasks_per_s = secs > 0 ? T / secs : 0;
    LOG_INFO("eval", dname << " " << m.name << " " << cfg.way << "w" << shot << "s: " << r.acc.mean << " +- "
                           << r.acc.ci95 << " % over " << r.acc.episodes << " episodes; " << r.tasks_per_s
                           << " tasks/s");
    by_shot[shot] = r;
    run.cache.put_row(key(shot), source, r);
    env::fault_point(run.comm.rank(), "eval");
  }
  for (int shot : cfg.shots) run.rows.push_back(by_shot.at(shot));
}

// The per-task accuracies and seconds of the episodes `left` (split over ranks), each finished
// episode kept in the cache for a resumed run; every rank gets all of them, in `left` order.
std::pair<std::vector<double>, std::vector<double>> run_episodes(
    Run& run, const MethodInstance& m, const data::ImageSet& set, const data::EpisodeSpec& spec,
    const std::vector<int64_t>& left, const std::string& key, const std::string& source, const std::string& what) {
  const data::EpisodeSampler sampler(set, spec);
  dist::Communicator& comm = run.comm;
  Progress progress("eval", what, (static_cast<int64_t>(left.size()) + comm.size() - 1) / comm.size(), "tasks", 10.0);
  std::vector<double> mine, mine_secs;
  for (size_t j = comm.rank(); j < left.size(); j += comm.size()) {
    const int64_t i = left[j];
    const auto te = Clock::now();
    auto rng = data::make_rng(run.cfg.seed, 0, static_cast<std::uint64_t>(i));
    const data::Episode e = sampler.sample(rng);
    mine.push_back(m.episode(run.vit.preprocess(set.gather(e.support)), run.vit.preprocess(set.gather(e.query)),
                             spec.k_shot, run.cfg.seed * 1000003 + static_cast<std::uint64_t>(i)));
    mine_secs.push_back(since(te));
    run.cache.put_episode(key, source, i, mine.back(), mine_secs.back());
    progress.advance(1, comm.size());
    env::fault_point(comm.rank(), "eval");
  }
  progress.finish();
  return {fewshot::all_gather_values(mine, static_cast<int64_t>(left.size()), comm),
          fewshot::all_gather_values(mine_secs, static_cast<int64_t>(left.size()), comm)};
}

// A kPerTask method on one dataset and shot: the first n episodes of the same list, one at a
// time; episodes an interrupted run finished are reused.
void eval_per_task(Run& run, const std::string& dname, const data::ImageSet& set, const std::string& dsource,
                   const MethodInstance& m, int shot) {
  const EvalConfig& cfg = run.cfg;
  const std::string key = dname + "__" + m.name + "__" + std::to_string(shot);
  const std::string source = dsource + m.source;
  const int n = m.episodes > 0 ? std::min(m.episodes, cfg.episodes) : cfg.episodes;
  // The row covers the first n episodes (--ft-episodes, --hub-episodes); each episode line is one
  // task, whatever n.
  const std::string row_source = source + "|episodes " + std::to_string(n);
  if (auto r = run.cache.row(key, row_source)) {
    run.rows.push_back(*r);
    ++run.reused;
    return;
  }
  const data::EpisodeSpec spec{cfg.way, shot, cfg.query};
  const auto done = run.cache.episodes(key, source);
  std::vector<int64_t> left;
  for (int64_t i = 0; i < n; ++i)
    if (done.count(i) == 0) left.push_back(i);
  if (!done.empty())
    LOG_INFO("eval", dname << " " << m.name << " " << shot << "-shot: " << (n - left.size()) << " of " << n
                           << " episodes finished by an earlier run");
  const auto [run_acc, run_secs] =
      run_episodes(run, m, set, spec, left, key, source, dname + " " + m.name + " " + std::to_string(shot) + "-shot");
  std::map<int64_t, std::pair<double, double>> all(done.begin(), done.lower_bound(n));  // by episode, < n
  for (size_t j = 0; j < left.size(); ++j) all[left[j]] = {run_acc[j], run_secs[j]};
  std::vector<double> acc;
  double total = 0;
  for (const auto& [i, v] : all) acc.push_back(v.first), total += v.second;
  EvalRow r;
  r.dataset = dname, r.method = m.name, r.way = cfg.way, r.shot = shot, r.query = cfg.query;
  r.acc = fewshot::summarize(acc, total);
  r.timed_tasks = n;
  // Ranks adapt independently: throughput = world size / mean seconds per task.
  r.tasks_per_s = total > 0 ? run.comm.size() * n / total : 0;
  LOG_INFO("eval", dname << " " << m.name << " " << cfg.way << "w" << shot << "s: " << r.acc.mean << " +- "
                         << r.acc.ci95 << " % over " << n << " episodes (" << m.detail << "); " << r.tasks_per_s
                         << " tasks/s");
  run.rows.push_back(r);
  run.cache.put_row(key, row_source, r);
  env::fault_point(run.comm.rank(), "eval");
}

// results.csv and results.json (rank 0); each JSON row names the inputs it was computed from.
void write_results(const EvalConfig& cfg, int world_size, const std::vector<EvalRow>& rows, const json& inputs,
                   const std::map<std::string, std::string>& method_input) {
  fs::make_dirs(cfg.out);
  std::string csv = "dataset,method,way,shot,query,episodes,mean,ci95,tasks_per_s,timed_tasks,ref,diff,diff_ci95\n";
  json j = {{"model", cfg.model}, {"seed", cfg.seed}, {"world_size", world_size}, {"ft_steps", cfg.ft_steps},
            {"ft_lr", cfg.ft_lr}, {"inputs", inputs}, {"rows", json::array()}};
  for (const auto& r : rows) {
    char line[512];
    std::snprintf(line, sizeof line, "%s,%s,%d,%d,%d,%lld,%.4f,%.4f,%.4f,%lld,", r.dataset.c_str(), r.method.c_str(),
                  r.way, r.shot, r.query, static_cast<long long>(r.acc.episodes), r.acc.mean, r.acc.ci95, r.tasks_per_s,
                  static_cast<long long>(r.timed_tasks));
    csv += line;
    if (!r.ref.empty()) {
      std::snprintf(line, sizeof line, "%s,%.4f,%.4f", r.ref.c_str(), r.vs_ref.mean, r.vs_ref.ci95);
      csv += line;
    } else {
      csv += ",,";
    }
    csv += "\n";
    json rj = row_json(r);
    if (!r.ref.empty())
      rj["paired"] = {
          {"ref", r.ref}, {"diff", r.vs_ref.mean}, {"ci95", r.vs_ref.ci95}, {"episodes", r.vs_ref.episodes}};
    rj["inputs"] = {"model", "data/" + r.dataset};
    if (auto it = method_input.find(r.method); it != method_input.end() && !it->second.empty())
      rj["inputs"].push_back(it->second);
    j["rows"].push_back(rj);
  }
  fs::write_text(stdfs::path(cfg.out) / "results.csv", csv);
  fs::write_text(stdfs::path(cfg.out) / "results.json", j.dump(2) + "\n");
  LOG_INFO("eval", "wrote " << cfg.out << "/results.csv and results.json");
}

}  // namespace

std::vector<EvalRow> run_eval(const EvalConfig& cfg, dist::Communicator& comm, const c10::Device& device) {
  cfg.validate();
  if (!cfg.out.empty()) {  // before any work: --out is new, empty or an eval directory
    (void)prov::check_output_dir(cfg.out, "eval");
    comm.barrier();
    if (comm.rank() == 0) prov::claim_output_dir(cfg.out, "eval", nullptr);
    comm.barrier();
  }
  model::ClipVision vit = model::ClipVision::load(cfg.model);
  vit.to(device);
  vit.set_precision(cfg.precision);
  ZooLoras zoo = load_zoo(cfg, vit);
  json inputs = {{"model", input_json(cfg.model, io::checked_model_digest(cfg.model))},
                 {"data", json::object()},
                 {"meta", json::object()}};
  if (!zoo.dirs.empty()) inputs["zoo"] = input_json(cfg.zoo, model::adapters_digest(zoo.dirs));
  // The method table's wanted entries, in its order (kFixed methods' rows first).
  MethodContext ctx{cfg, vit, device, &zoo.loras, zoo.source};
  std::vector<MethodInstance> fixed, per_task;
  std::map<std::string, std::string> method_input;
  for (const MethodSpec& spec : method_table()) {
    if (!method_wanted(spec, cfg)) continue;
    for (MethodInstance& m : spec.make(ctx)) {
      method_input[m.name] = m.input;
      if (!m.input_dir.empty()) inputs["meta"][m.name] = input_json(m.input_dir, model::adapter_digest(m.input_dir));
      (spec.adapts == Adapts::kFixed ? fixed : per_task).push_back(std::move(m));
    }
  }
  if (fixed.empty() && per_task.empty()) throw InputError("eval: no method to run");
  ResultCache cache(cfg.out, eval_settings(cfg, device), comm);
  Run run{cfg, comm, vit, cache, {}, 0};
  for (const auto& dspec : cfg.data) {
    auto [dname, path] = split_data(dspec);
    const data::ImageSet set = data::ImageSet::load(path);
    model::check_image_shape(set.images().sizes(), vit.config(), path);
    for (int shot : cfg.shots)  // refuses a set too small for the episodes before any embedding
      (void)data::EpisodeSampler(set, data::EpisodeSpec{cfg.way, shot, cfg.query}, "--way, --shots or --query");
    const std::string dsource = path + "|" + fingerprint(path);
    inputs["data"][dname] = input_json(path, prov::file_digest(path));
    LOG_INFO("eval", dname << " (" << path << "): " << set.num_classes() << " classes, " << set.size() << " images");
    for (const MethodInstance& m : fixed) eval_fixed(run, dname, set, dsource, m);
    for (const MethodInstance& m : per_task)
      for (int shot : cfg.shots) eval_per_task(run, dname, set, dsource, m, shot);
  }
  if (run.reused > 0)
    LOG_INFO("eval", run.reused << " result rows reused from an earlier run (" << cfg.out << "/partial)");
  add_paired(run.rows);
  if (comm.rank() == 0) {
    std::fputs(format_table(run.rows).c_str(), stdout);
    std::fflush(stdout);
    if (!cfg.out.empty()) write_results(cfg, comm.size(), run.rows, inputs, method_input);
  }
  comm.barrier();
  return run.rows;
}

}  // namespace lorarec::eval
