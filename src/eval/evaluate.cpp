#include "lorarecycle/eval/evaluate.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <sstream>

#include "lorarecycle/data/image_set.h"
#include "lorarecycle/dist/communicator.h"
#include "lorarecycle/eval/lorahub.h"
#include "lorarecycle/io/peft.h"
#include "lorarecycle/io/safetensors.h"
#include "lorarecycle/train/optim.h"
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

std::pair<std::string, std::string> split_named(const std::string& spec, const std::string& default_name) {
  const auto eq = spec.find('=');
  if (eq != std::string::npos && eq > 0) return {spec.substr(0, eq), spec.substr(eq + 1)};
  return {default_name, spec};
}

double slowest(double seconds, dist::Communicator& comm) {
  double m = 0;
  for (double s : comm.all_gather_f64(seconds)) m = std::max(m, s);
  return m;
}

json read_manifest(const std::string& zoo) {
  const stdfs::path manifest = stdfs::path(zoo) / "manifest.json";
  try {
    json m = json::parse(fs::read_text(manifest));
    if (!m.contains("loras") || !m["loras"].is_array()) throw InputError(manifest.string() + ": no \"loras\" list");
    return m;
  } catch (const json::exception& e) {
    throw InputError(manifest.string() + ": not valid JSON: " + e.what());
  }
}

struct Method {
  std::string name;
  std::string kind;  // nn | lora-avg | lora-ft | meta
  std::unique_ptr<model::Lora> lora;
  std::string source;  // identity of the files it was loaded from (result cache)
};

std::string fnv_hex(const std::string& s) { return prov::hex(dist::fnv1a64(s.data(), s.size())); }

// One result row as results.json and the result cache store it.
json row_json(const EvalRow& r) {
  return {{"dataset", r.dataset},
          {"method", r.method},
          {"way", r.way},
          {"shot", r.shot},
          {"query", r.query},
          {"episodes", r.acc.episodes},
          {"mean", r.acc.mean},
          {"ci95", r.acc.ci95},
          {"tasks_per_s", r.tasks_per_s},
          {"timed_tasks", r.timed_tasks}};
}
EvalRow row_from_json(const json& j) {
  EvalRow r;
  r.dataset = j.at("dataset"), r.method = j.at("method"), r.way = j.at("way"), r.shot = j.at("shot");
  r.query = j.at("query"), r.acc.mean = j.at("mean"), r.acc.ci95 = j.at("ci95"), r.acc.episodes = j.at("episodes");
  r.tasks_per_s = j.at("tasks_per_s"), r.timed_tasks = j.at("timed_tasks");
  return r;
}

// A file's or directory's identity for the result cache: sizes and modification times.
std::string fingerprint(const std::string& path) {
  std::error_code ec;
  const auto one = [&](const stdfs::path& p) {
    const auto t = stdfs::last_write_time(p, ec).time_since_epoch().count();
    return p.filename().string() + ":" + std::to_string(stdfs::file_size(p, ec)) + ":" + std::to_string(t);
  };
  if (!stdfs::is_directory(path)) return one(path);
  std::vector<std::string> parts;
  for (const auto& e : stdfs::directory_iterator(path, ec))
    if (e.is_regular_file()) parts.push_back(one(e.path()));
  std::sort(parts.begin(), parts.end());
  std::string out;
  for (const auto& p : parts) out += p + ";";
  return out;
}

// Resumable evaluation. With --out, every finished result row and every lora-ft episode is
// recorded under OUT/partial/, keyed by the settings and by the identity (size, mtime) of the
// files it depends on; a re-run with the same settings reuses them, so a killed eval loses at most
// the rows (prototype methods) or episodes (lora-ft) in flight. Rank 0 reads, every rank gets
// the same answer.
class ResultCache {
 public:
  ResultCache(const std::string& out, const json& settings, dist::Communicator& comm)
      : comm_(comm), dir_(out.empty() ? stdfs::path() : stdfs::path(out) / "partial") {
    if (dir_.empty()) return;
    const std::string want = settings.dump();
    if (comm_.rank() == 0) {
      const stdfs::path sp = dir_ / "settings.json";
      std::string have;
      if (stdfs::exists(sp)) have = fs::read_text(sp);
      if (have != want + "\n") {
        if (!have.empty()) LOG_WARN("eval", dir_.string() << ": settings changed, previous partial results discarded");
        std::error_code ec;
        stdfs::remove_all(dir_, ec);
        fs::make_dirs(dir_);
        fs::write_text(sp, want + "\n");
      } else {
        LOG_INFO("eval", "reusing finished results under " << dir_.string());
      }
    }
    comm_.barrier();
  }
  bool enabled() const { return !dir_.empty(); }

  // The cached row for key whose dependencies have identity `source`, if any.
  std::optional<EvalRow> row(const std::string& key, const std::string& source) {
    if (!enabled()) return std::nullopt;
    std::string text;
    if (comm_.rank() == 0) {
      const stdfs::path p = dir_ / (safe(key) + ".json");
      if (stdfs::exists(p)) text = fs::read_text(p);
    }
    text = comm_.broadcast_string(text, 0);
    if (text.empty()) return std::nullopt;
    try {
      json j = json::parse(text);
      if (j.at("source") != source) return std::nullopt;
      // The row's own digest: a row whose bytes changed since it was written is recomputed.
      const std::string digest = j.value("digest", std::string());
      j.erase("digest");
      if (digest != fnv_hex(j.dump())) {
        if (comm_.rank() == 0)
          LOG_WARN("eval", (dir_ / (safe(key) + ".json")).string()
                               << ": corrupt (its digest does not match), recomputed");
        return std::nullopt;
      }
      return row_from_json(j);
    } catch (const json::exception&) {
      if (comm_.rank() == 0)
        LOG_WARN("eval", (dir_ / (safe(key) + ".json")).string() << ": corrupt (not a valid result row), recomputed");
      return std::nullopt;
    }
  }
  void put_row(const std::string& key, const std::string& source, const EvalRow& r) {
    if (!enabled() || comm_.rank() != 0) return;
    json j = row_json(r);
    j["source"] = source;
    j["digest"] = fnv_hex(j.dump());
    fs::write_text(dir_ / (safe(key) + ".json"), j.dump() + "\n");
  }

  // lora-ft episodes already finished for key: episode -> (accuracy, seconds). Lines are
  // "EPISODE ACCURACY SECONDS SOURCE-HASH LINE-HASH" (LINE-HASH: of the four fields before it);
  // a line cut short by a kill, or whose bytes changed since, is ignored (the episode is re-run).
  std::map<int64_t, std::pair<double, double>> episodes(const std::string& key, const std::string& source) {
    std::map<int64_t, std::pair<double, double>> done;
    if (!enabled()) return done;
    std::string text;
    if (comm_.rank() == 0) {
      const std::string prefix = safe(key) + ".r";
      for (const auto& e : stdfs::directory_iterator(dir_)) {
        const std::string name = e.path().filename().string();
        if (name.rfind(prefix, 0) == 0 && name.size() > 4 && name.substr(name.size() - 4) == ".txt")
          text += fs::read_text(e.path());
      }
    }
    text = comm_.broadcast_string(text, 0);
    const std::string h = fnv_hex(source);
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line)) {
      if (in.eof()) break;  // no newline: cut short
      const auto cut = line.rfind(' ');
      if (cut == std::string::npos || fnv_hex(line.substr(0, cut)) != line.substr(cut + 1)) {
        if (!line.empty()) LOG_DEBUG("eval", "lora-ft episode line not reused (cut short or changed): " << line);
        continue;
      }
      std::istringstream ls(line.substr(0, cut));
      int64_t i;
      double acc, secs;
      std::string hs;
      if (ls >> i >> acc >> secs >> hs && hs == h) done[i] = {acc, secs};
    }
    return done;
  }
  void put_episode(const std::string& key, const std::string& source, int64_t i, double acc, double secs) {
    if (!enabled()) return;
    const stdfs::path p = dir_ / (safe(key) + ".r" + std::to_string(comm_.rank()) + ".txt");
    std::FILE* f = std::fopen(p.c_str(), "a");
    if (f == nullptr) fs::throw_write_error(p);
    char fields[128];
    std::snprintf(fields, sizeof fields, "%lld %.17g %.9g %s", static_cast<long long>(i), acc, secs,
                  fnv_hex(source).c_str());
    std::fprintf(f, "%s %s\n", fields, fnv_hex(fields).c_str());
    const bool ok = std::fflush(f) == 0;
    if (std::fclose(f) != 0 || !ok) fs::throw_write_error(p);
  }

 private:
  static std::string safe(std::string s) {
    for (char& c : s)
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') c = '_';
    return s;
  }
  dist::Communicator& comm_;
  stdfs::path dir_;
};

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
    if (m != "nn" && m != "lora-avg" && m != "lora-ft" && m != "lorahub" && m != "meta")
      throw InputError("eval: unknown method '" + m + "' (nn, lora-avg, lora-ft, lorahub, meta)");
  const auto wants = [&](const char* m) {
    return methods.empty() || std::count(methods.begin(), methods.end(), m) > 0;
  };
  if (!methods.empty() && wants("lora-avg") && zoo.empty()) throw InputError("eval: method lora-avg needs --zoo");
  if (!methods.empty() && wants("lorahub") && zoo.empty()) throw InputError("eval: method lorahub needs --zoo");
  if (hub_episodes < 0 || hub.budget < 1 || !(hub.l1 >= 0) || !(hub.sigma > 0) || !(hub.bound > 0))
    throw InputError(
        "eval: need --hub-episodes >= 0, --hub-budget >= 1, --hub-l1 >= 0, --hub-sigma > 0, --hub-bound > 0");
  if (!methods.empty() && wants("meta") && meta.empty()) throw InputError("eval: method meta needs --meta");
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
    const at::Tensor p = f.view({way, shot, f.size(-1)}).mean(1);
    ft.set_head((2.0 * p).contiguous(), (-p.pow(2).sum(-1)).contiguous());
  }
  ft.set_requires_grad(true, true);
  train::AdamW opt(ft.parameters(true), train::AdamWConfig{});
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

std::string format_table(const std::vector<EvalRow>& rows) {
  std::ostringstream os;
  char buf[256];
  std::snprintf(buf, sizeof buf, "%-14s %-16s %-10s %-18s %10s\n", "dataset", "method", "setting",
                "accuracy % (95% CI)", "tasks/s");
  os << buf;
  for (const auto& r : rows) {
    char setting[32], acc[48];
    std::snprintf(setting, sizeof setting, "%dw%ds", r.way, r.shot);
    std::snprintf(acc, sizeof acc, "%6.2f +- %4.2f", r.acc.mean, r.acc.ci95);
    std::snprintf(buf, sizeof buf, "%-14s %-16s %-10s %-18s %10.2f\n", r.dataset.c_str(), r.method.c_str(), setting,
                  acc, r.tasks_per_s);
    os << buf;
  }
  return os.str();
}

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
  const auto wants = [&](const char* m) {
    return cfg.methods.empty() || std::count(cfg.methods.begin(), cfg.methods.end(), m) > 0;
  };
  // The zoo's LoRAs (lora-avg, lorahub), read once, and the identity of their files (result cache).
  std::vector<model::Lora> zoo_loras;
  std::string zoo_source;
  std::vector<std::string> zoo_dirs;
  if ((wants("lora-avg") || wants("lorahub")) && !cfg.zoo.empty()) {
    const json m = read_manifest(cfg.zoo);
    for (const auto& e : m.at("loras")) {
      const std::string dir = (stdfs::path(cfg.zoo) / e.at("dir").get<std::string>()).string();
      zoo_loras.push_back(io::load_peft(dir, vit.config(), cfg.model));
      zoo_source += fingerprint(dir);
      zoo_dirs.push_back(dir);
    }
  }
  // Provenance of the results: every input by content digest (results.json "inputs"; each row
  // names the inputs it was computed from). `lorarecycle verify` compares them with the files.
  const auto input = [](const std::string& path, const std::string& digest) {
    return json{{"path", path},
                {"absolute path", stdfs::absolute(path).lexically_normal().string()},
                {"content digest", digest}};
  };
  json inputs = {{"model", input(cfg.model, io::checked_model_digest(cfg.model))},
                 {"data", json::object()},
                 {"meta", json::object()}};
  if (!zoo_dirs.empty()) inputs["zoo"] = input(cfg.zoo, io::adapters_digest(zoo_dirs));
  std::vector<Method> methods;
  if (wants("nn")) methods.push_back({"nn", "nn", nullptr, ""});
  if (wants("lora-avg") && !cfg.zoo.empty()) {
    auto avg = std::make_unique<model::Lora>(model::average_loras(zoo_loras, vit.config()));
    avg->to(device);
    LOG_INFO("eval", "lora-avg: the mean of " << zoo_loras.size() << " zoo LoRAs of " << cfg.zoo);
    methods.push_back({"lora-avg", "lora-avg", std::move(avg), zoo_source});
  }
  if (wants("meta"))
    for (const auto& spec : cfg.meta) {
      auto [name, dir] = split_named(spec, cfg.meta.size() == 1 ? "meta" : stdfs::path(spec).filename().string());
      auto l = std::make_unique<model::Lora>(io::load_peft(dir, vit.config(), cfg.model));
      l->to(device);
      methods.push_back({name, "meta", std::move(l), fingerprint(dir)});
      inputs["meta"][name] = input(dir, io::adapter_digest(dir));
    }
  // Per-task adaptive methods: name, episodes (0 = all), result-cache identity, log detail, and the
  // episode itself (normalised support and query pixels, shot, seed -> query accuracy %).
  struct Adaptive {
    std::string name;
    int episodes;
    std::string source, detail;
    std::function<double(const at::Tensor&, const at::Tensor&, int, std::uint64_t)> run;
  };
  std::vector<Adaptive> adaptive;
  if (wants("lora-ft"))
    adaptive.push_back({"lora-ft", cfg.ft_episodes, "",
                        std::to_string(cfg.ft_steps) + " steps, lr " + std::to_string(cfg.ft_lr),
                        [&](const at::Tensor& s, const at::Tensor& q, int shot, std::uint64_t seed) {
                          return finetune_episode(vit, s, q, cfg.way, shot, cfg.ft_lora, cfg.ft_steps, cfg.ft_lr, seed);
                        }});
  if (wants("lorahub") && !cfg.zoo.empty()) {
    model::require_same_shape(zoo_loras, "lorahub");  // up front, not per task
    for (auto& l : zoo_loras) l.to(device);
    const std::string src = "|lorahub " + std::to_string(cfg.hub.budget) + " " + std::to_string(cfg.hub.l1) + " " +
                            std::to_string(cfg.hub.sigma) + " " + std::to_string(cfg.hub.bound) + " " +
                            std::to_string(cfg.hub.shift) + zoo_source;
    LOG_INFO("eval", "lorahub: " << zoo_loras.size() << " zoo LoRAs of " << cfg.zoo << ", CMA-ES over their weights, "
                                 << cfg.hub.budget << " evaluations per task, L1 " << cfg.hub.l1);
    adaptive.push_back({"lorahub", cfg.hub_episodes, src, "CMA-ES, " + std::to_string(cfg.hub.budget) + " evaluations",
                        [&](const at::Tensor& s, const at::Tensor& q, int shot, std::uint64_t seed) {
                          return lorahub_episode(vit, zoo_loras, s, q, cfg.way, shot, cfg.hub, seed).accuracy;
                        }});
  }
  if (methods.empty() && adaptive.empty()) throw InputError("eval: no method to run");

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
  ResultCache cache(cfg.out, settings, comm);
  std::vector<EvalRow> rows;
  int reused = 0;
  for (const auto& dspec : cfg.data) {
    auto [dname, path] = split_named(dspec, stdfs::path(dspec).stem().string());
    const data::ImageSet set = data::ImageSet::load(path);
    model::check_image_shape(set.images().sizes(), vit.config(), path);
    for (int shot : cfg.shots)  // refuses a set too small for the episodes before any embedding
      (void)data::EpisodeSampler(set, data::EpisodeSpec{cfg.way, shot, cfg.query}, "--way, --shots or --query");
    const std::string dsource = path + "|" + fingerprint(path);
    inputs["data"][dname] = input(path, prov::file_digest(path));
    LOG_INFO("eval", dname << " (" << path << "): " << set.num_classes() << " classes, " << set.size() << " images");
    for (const auto& m : methods) {
      const auto key = [&](int shot) { return dname + "__" + m.name + "__" + std::to_string(shot); };
      const std::string source = dsource + "|" + m.source;
      std::map<int, EvalRow> by_shot;  // rows in --shots order, whether reused or computed
      std::vector<int> todo;
      for (int shot : cfg.shots) {
        if (auto r = cache.row(key(shot), source)) {
          by_shot[shot] = *r;
          ++reused;
        } else {
          todo.push_back(shot);
        }
      }
      const at::Tensor feats = todo.empty() ? at::Tensor() : embed_all(vit, m.lora.get(), set, comm, cfg.batch_size);
      for (int shot : todo) {
        const data::EpisodeSpec spec{cfg.way, shot, cfg.query};
        EvalRow r;
        r.dataset = dname, r.method = m.name, r.way = cfg.way, r.shot = shot, r.query = cfg.query;
        r.acc = evaluate_prototypes(feats, set, spec, cfg.episodes, cfg.seed, comm);
        // Throughput as a user sees it: each task's own images through the network, then prototypes.
        const int T = std::min(cfg.episodes, cfg.timing_episodes);
        const data::EpisodeSampler sampler(set, spec);
        comm.barrier();
        const auto t0 = Clock::now();
        {
          at::NoGradGuard ng;
          for (int i = comm.rank(); i < T; i += comm.size()) {
            auto rng = data::make_rng(cfg.seed, 0, static_cast<std::uint64_t>(i));
            const data::Episode e = sampler.sample(rng);
            std::vector<int64_t> all = e.support;
            all.insert(all.end(), e.query.begin(), e.query.end());
            const at::Tensor f = vit.forward(vit.preprocess(set.gather(all)), {}, m.lora.get()).feature;
            const int ns = spec.n_way * spec.k_shot;
            (void)prototype_logits(f.narrow(0, 0, ns), f.narrow(0, ns, f.size(0) - ns), spec.n_way, spec.k_shot)
                .argmax(-1)
                .cpu();
          }
        }
        const double secs = slowest(since(t0), comm);
        r.timed_tasks = T;
        r.tasks_per_s = secs > 0 ? T / secs : 0;
        LOG_INFO("eval", dname << " " << m.name << " " << cfg.way << "w" << shot << "s: " << r.acc.mean << " +- "
                               << r.acc.ci95 << " % over " << r.acc.episodes << " episodes; " << r.tasks_per_s
                               << " tasks/s");
        by_shot[shot] = r;
        cache.put_row(key(shot), source, r);
        env::fault_point(comm.rank(), "eval");
      }
      for (int shot : cfg.shots) rows.push_back(by_shot.at(shot));
    }
    // Methods that adapt per task (fine-tuning, LoRAHub's search): the first n episodes of the same
    // list, one at a time, each finished episode kept for a resumed run.
    for (const auto& am : adaptive) {
      for (int shot : cfg.shots) {
        const std::string fkey = dname + "__" + am.name + "__" + std::to_string(shot);
        const std::string asource = dsource + am.source;
        if (auto r = cache.row(fkey, asource)) {
          rows.push_back(*r);
          ++reused;
          continue;
        }
        const data::EpisodeSpec spec{cfg.way, shot, cfg.query};
        const data::EpisodeSampler sampler(set, spec);
        const int n = am.episodes > 0 ? std::min(am.episodes, cfg.episodes) : cfg.episodes;
        // Episodes finished by an earlier, interrupted run are kept; the rest are split over ranks.
        const auto done = cache.episodes(fkey, asource);
        std::vector<int64_t> left;
        for (int64_t i = 0; i < n; ++i)
          if (done.count(i) == 0) left.push_back(i);
        if (!done.empty())
          LOG_INFO("eval", dname << " " << am.name << " " << shot << "-shot: " << (n - left.size()) << " of " << n
                                 << " episodes finished by an earlier run");
        Progress progress("eval", dname + " " + am.name + " " + std::to_string(shot) + "-shot",
                          (static_cast<int64_t>(left.size()) + comm.size() - 1) / comm.size(), "tasks", 10.0);
        std::vector<double> mine, mine_secs;
        for (size_t j = comm.rank(); j < left.size(); j += comm.size()) {
          const int64_t i = left[j];
          const auto te = Clock::now();
          auto rng = data::make_rng(cfg.seed, 0, static_cast<std::uint64_t>(i));
          const data::Episode e = sampler.sample(rng);
          mine.push_back(am.run(vit.preprocess(set.gather(e.support)), vit.preprocess(set.gather(e.query)), shot,
                                cfg.seed * 1000003 + static_cast<std::uint64_t>(i)));
          mine_secs.push_back(since(te));
          cache.put_episode(fkey, asource, i, mine.back(), mine_secs.back());
          progress.advance(1, comm.size());
          env::fault_point(comm.rank(), "eval");
        }
        progress.finish();
        std::vector<double> acc = all_gather_values(mine, static_cast<int64_t>(left.size()), comm);
        std::vector<double> secs = all_gather_values(mine_secs, static_cast<int64_t>(left.size()), comm);
        for (const auto& [i, v] : done) acc.push_back(v.first), secs.push_back(v.second);
        double total = 0;
        for (double x : secs) total += x;
        EvalRow r;
        r.dataset = dname, r.method = am.name, r.way = cfg.way, r.shot = shot, r.query = cfg.query;
        r.acc = summarize(acc, total);
        r.timed_tasks = n;
        // Ranks adapt independently: throughput = world size / mean seconds per task.
        r.tasks_per_s = total > 0 ? comm.size() * n / total : 0;
        LOG_INFO("eval", dname << " " << am.name << " " << cfg.way << "w" << shot << "s: " << r.acc.mean << " +- "
                               << r.acc.ci95 << " % over " << n << " episodes (" << am.detail << "); " << r.tasks_per_s
                               << " tasks/s");
        rows.push_back(r);
        cache.put_row(fkey, asource, r);
        env::fault_point(comm.rank(), "eval");
      }
    }
  }
  if (reused > 0) LOG_INFO("eval", reused << " result rows reused from an earlier run (" << cfg.out << "/partial)");

  if (comm.rank() == 0) {
    std::fputs(format_table(rows).c_str(), stdout);
    std::fflush(stdout);
    if (!cfg.out.empty()) {
      fs::make_dirs(cfg.out);
      std::string csv = "dataset,method,way,shot,query,episodes,mean,ci95,tasks_per_s,timed_tasks\n";
      json j = {{"model", cfg.model}, {"seed", cfg.seed}, {"world_size", comm.size()}, {"ft_steps", cfg.ft_steps},
                {"ft_lr", cfg.ft_lr}, {"inputs", inputs}, {"rows", json::array()}};
      for (const auto& r : rows) {
        char line[512];
        std::snprintf(line, sizeof line, "%s,%s,%d,%d,%d,%lld,%.4f,%.4f,%.4f,%lld\n", r.dataset.c_str(),
                      r.method.c_str(), r.way, r.shot, r.query, static_cast<long long>(r.acc.episodes), r.acc.mean,
                      r.acc.ci95, r.tasks_per_s, static_cast<long long>(r.timed_tasks));
        csv += line;
        json rj = row_json(r);
        // The inputs this row was computed from, as keys of "inputs".
        rj["inputs"] = {"model", "data/" + r.dataset};
        if (r.method == "lora-avg" || r.method == "lorahub") rj["inputs"].push_back("zoo");
        if (inputs["meta"].contains(r.method)) rj["inputs"].push_back("meta/" + r.method);
        j["rows"].push_back(rj);
      }
      fs::write_text(stdfs::path(cfg.out) / "results.csv", csv);
      fs::write_text(stdfs::path(cfg.out) / "results.json", j.dump(2) + "\n");
      LOG_INFO("eval", "wrote " << cfg.out << "/results.csv and results.json");
    }
  }
  comm.barrier();
  return rows;
}

}  // namespace lorarec::eval
