#include "lorarecycle/verify/verify.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <exception>
#include <functional>
#include <map>
#include <set>

#include "lorarecycle/data/surrogate_pool.h"
#include "lorarecycle/data/zoo_manifest.h"
#include "lorarecycle/io/hdf5.h"
#include "lorarecycle/io/safetensors.h"
#include "lorarecycle/model/peft.h"
#include "lorarecycle/util/error.h"
#include "lorarecycle/util/fs.h"
#include "lorarecycle/util/provenance.h"

namespace lorarec::verify {
namespace {

namespace stdfs = std::filesystem;
using json = nlohmann::json;

// Pipeline order: an output's inputs are checked (and registered by digest) before it.
const std::vector<std::string> kKinds = {"pretrain",  "pretrain-work",  "zoo", "pool",
                                         "metatrain", "metatrain-work", "eval"};

int kind_rank(const std::string& kind) {
  return static_cast<int>(std::find(kKinds.begin(), kKinds.end(), kind) - kKinds.begin());
}

struct Output {
  stdfs::path dir;
  std::string kind;
  json marker;  // empty for an unmarked directory
};

// The outputs of the run found so far, by content digest, for the provenance chain.
struct Registry {
  std::map<std::string, stdfs::path> models;        // model_digest -> pretrain dir
  std::map<std::string, stdfs::path> zoo_manifest;  // manifest.json digest -> zoo dir
  std::map<std::string, stdfs::path> zoo_adapters;  // model::adapters_digest of its LoRAs -> zoo dir
  std::map<std::string, stdfs::path> adapters;      // adapter weights digest -> LoRA dir (zoo entries, meta-LoRAs)
  std::map<std::string, stdfs::path> pools;         // index.json digest -> pool dir
};

class Checker {
 public:
  Checker(Report& report, Registry& reg) : report_(report), reg_(reg) {}

  void check(const Output& o) {
    kind_ = o.kind;
    dir_ = o.dir;
    problems_before_ = report_.problems;
    notes_.clear();
    if (o.marker.is_null() || o.marker.empty()) {
      problem(dir_,
              "no " + std::string(prov::kMarker) + " marker: written by an older version, provenance not recorded");
    }
    try {
      if (kind_ == "pretrain") pretrain(o);
      if (kind_ == "pretrain-work" || kind_ == "metatrain-work") work(o);
      if (kind_ == "zoo") zoo(o);
      if (kind_ == "pool") pool(o);
      if (kind_ == "metatrain") metatrain(o);
      if (kind_ == "eval") eval(o);
    } catch (const std::exception& e) {
      problem(dir_, e.what());
    }
    if (report_.problems == problems_before_) {
      std::string text;
      for (const auto& n : notes_) text += (text.empty() ? "" : "; ") + n;
      report_.findings.push_back({false, kind_, dir_.string(), text});
    }
  }

 private:
  void problem(const stdfs::path& path, const std::string& text) {
    report_.findings.push_back({true, kind_, path.string(), text});
    ++report_.problems;
  }
  void note(const std::string& text) { notes_.push_back(text); }

  // The file must exist; returns false (a problem) otherwise.
  bool need(const stdfs::path& file, const std::string& why) {
    std::error_code ec;
    if (stdfs::is_regular_file(file, ec)) return true;
    problem(file, "missing (" + why + ")");
    return false;
  }
  json read_json(const stdfs::path& file) {
    try {
      return json::parse(fs::read_text(file));
    } catch (const json::exception& e) {
      throw InputError(file.string() + ": not valid JSON: " + e.what());
    }
  }
  // Opens a safetensors file (SafetensorsFile::open verifies its content digest); a problem when
  // it is corrupt or carries no digest.
  bool safetensors_intact(const stdfs::path& file) {
    try {
      const io::SafetensorsFile f = io::SafetensorsFile::open(file.string());
      if (f.metadata().count(io::kDigestKey) == 0) {
        problem(file, "no content digest (written by an older version or elsewhere): integrity not checkable");
        return false;
      }
      return true;
    } catch (const std::exception& e) {
      problem(file, e.what());
      return false;
    }
  }
  // The settings an index (manifest.json, index.json) records, which its marker must repeat.
  json recorded_settings(const json& doc, const stdfs::path& file, const json& marker) {
    const json settings = doc.value("settings", json());
    if (settings.is_null()) {
      problem(file, "no \"settings\": written by an older version, provenance not recorded");
    } else if (!marker.empty()) {
      const std::string diff = prov::first_difference(marker.value("settings", json::object()), settings, "the marker");
      if (!diff.empty())
        problem(dir_ / prov::kMarker, "the marker and " + file.filename().string() + " disagree: " + diff);
    }
    return settings;
  }
  // An output whose index was never written: how far it got.
  void incomplete(const std::string& index, int done, const std::string& units, const std::string& command) {
    problem(dir_, "incomplete: no " + index + " (" + std::to_string(done) + " " + units + " finished; re-run " +
                      command + " with the same options to finish it)");
  }

  // An input recorded by digest: found among the run's outputs (named), or at its recorded path
  // with the same digest, or changed (a problem), or not found (a note: outside the run).
  // `now_at` computes the digest of what is at a path today.
  void link(const std::string& what, const std::string& digest, const std::map<std::string, stdfs::path>& in_run,
            const std::string& recorded_path, const std::function<std::string(const stdfs::path&)>& now_at) {
    if (digest.empty()) {
      problem(dir_, what + ": no digest recorded");
      return;
    }
    if (auto it = in_run.find(digest); it != in_run.end()) {
      note(what + " " + it->second.string());
      return;
    }
    std::error_code ec;
    if (!recorded_path.empty() && stdfs::exists(recorded_path, ec)) {
      std::string now;
      try {
        now = now_at(recorded_path);
      } catch (const std::exception& e) {
        problem(dir_, what + " " + recorded_path + ": " + e.what());
        return;
      }
      if (now == digest) {
        note(what + " " + recorded_path + " (outside the run)");
      } else {
        problem(dir_, what + " " + recorded_path + " has changed since (digest " + now + ", made from " + digest + ")");
      }
      return;
    }
    note(what + " " + (recorded_path.empty() ? std::string("?") : recorded_path) + " not found (digest " + digest +
         "), not checked");
  }
  static std::string file_at(const stdfs::path& p) { return prov::file_digest(p); }
  static std::string model_at(const stdfs::path& p) { return prov::model_digest(p); }
  static std::string zoo_manifest_at(const stdfs::path& p) { return prov::file_digest(p / data::kZooManifestFile); }
  static std::string pool_index_at(const stdfs::path& p) { return prov::file_digest(p / data::kPoolIndexFile); }
  static std::string adapter_at(const stdfs::path& p) { return model::adapter_digest(p.string()); }
  static std::string zoo_at(const stdfs::path& p) {
    return model::adapters_digest(data::ZooManifest::read(p.string()).lora_dirs());
  }
  static std::string str(const json& j, const std::string& key) {
    return j.contains(key) && j[key].is_string() ? j[key].get<std::string>() : std::string();
  }

  void pretrain(const Output&) {
    if (!need(dir_ / "pretrain_report.json", "written when pre-training finishes")) return;
    if (!need(dir_ / "model.safetensors", "the weights")) return;
    int files = 0;
    for (const auto& e : stdfs::directory_iterator(dir_))
      if (e.path().extension() == ".safetensors" && safetensors_intact(e.path())) ++files;
    const std::string d = prov::model_digest(dir_);
    reg_.models[d] = dir_;
    note(std::to_string(files) + " weights file" + (files == 1 ? "" : "s") + " intact, model digest " + d);
  }

  void work(const Output&) {
    const stdfs::path ck = dir_ / "checkpoint.safetensors";
    std::error_code ec;
    if (!stdfs::exists(ck, ec)) {
      note("no checkpoint");
      return;
    }
    if (safetensors_intact(ck)) note("checkpoint intact");
  }

  void zoo(const Output& o) {
    const stdfs::path mp = dir_ / data::kZooManifestFile;
    if (!stdfs::exists(mp)) {
      int done = 0;
      for (const auto& e : stdfs::directory_iterator(dir_))
        if (stdfs::exists(e.path() / model::kPeftWeights)) ++done;
      incomplete(data::kZooManifestFile, done, "LoRAs", "zoo");
      return;
    }
    const json m = read_json(mp);
    const json settings = recorded_settings(m, mp, o.marker);
    const data::ZooManifest zm = data::ZooManifest::parse(dir_.string(), m);
    const auto& loras = zm.loras;
    const int want = m.value("num_loras", static_cast<int>(loras.size()));
    if (static_cast<int>(loras.size()) != want)
      problem(mp, "lists " + std::to_string(loras.size()) + " LoRAs of num_loras " + std::to_string(want));
    const std::string model_d = str(settings, "--model (content digest)");
    int ok = 0;
    for (const data::ZooEntry& e : loras) {
      const stdfs::path ld = e.dir;
      if (!need(ld / model::kPeftWeights, "a LoRA the manifest lists") || !need(ld / data::kZooTaskFile, "its task") ||
          !safetensors_intact(ld / model::kPeftWeights))
        continue;
      const json task = read_json(ld / data::kZooTaskFile);
      const std::string diff = prov::first_difference(task.value("settings", json::object()), settings, ld.string());
      if (!diff.empty()) {
        problem(ld / data::kZooTaskFile, "made with other settings than the manifest's: " + diff);
        continue;
      }
      const std::string bd = model::recorded_base_digest(ld.string());
      if (bd != model_d) {
        problem(ld / model::kPeftWeights,
                "tuned on VFM digest " + (bd.empty() ? "(none)" : bd) + ", the zoo's is " + model_d);
        continue;
      }
      reg_.adapters[adapter_at(ld)] = ld;
      ++ok;
    }
    if (ok != static_cast<int>(loras.size())) return;
    reg_.zoo_manifest[prov::file_digest(mp)] = dir_;
    reg_.zoo_adapters[model::adapters_digest(zm.lora_dirs())] = dir_;
    note(std::to_string(ok) + "/" + std::to_string(want) + " LoRAs, adapters intact, settings agree");
    link("VFM", model_d, reg_.models, m.value("model", ""), model_at);
    link("data", str(settings, "--data (content digest)"), {}, m.value("data", ""), file_at);
  }

  void pool(const Output& o) {
    const stdfs::path ip = dir_ / data::kPoolIndexFile;
    if (!stdfs::exists(ip)) {
      int done = 0;
      for (const auto& e : stdfs::directory_iterator(dir_))
        if (e.path().extension() == ".h5" && data::pool_file_complete(e.path().string())) ++done;
      incomplete(data::kPoolIndexFile, done, "pool files", "invert");
      return;
    }
    const json index = read_json(ip);
    const json settings = recorded_settings(index, ip, o.marker);
    // The zoo it was inverted from: by manifest digest in the run, else at the recorded path.
    const std::string zoo_d = str(settings, "--zoo (manifest digest)");
    stdfs::path zoo_dir;
    if (auto it = reg_.zoo_manifest.find(zoo_d); it != reg_.zoo_manifest.end())
      zoo_dir = it->second;
    else if (index.contains("zoo") &&
             stdfs::exists(stdfs::path(index["zoo"].get<std::string>()) / data::kZooManifestFile))
      zoo_dir = index["zoo"].get<std::string>();
    std::map<int, stdfs::path> lora_by_id;  // the zoo's LoRA directories by lora id
    if (!zoo_dir.empty()) {
      for (const data::ZooEntry& e : data::ZooManifest::read(zoo_dir.string()).loras) lora_by_id[e.id] = e.dir;
    }
    int ok = 0, images = 0;
    const auto& files = index.at("files");
    for (const auto& e : files) {
      const stdfs::path f = dir_ / e.at("file").get<std::string>();
      if (!need(f, "a pool file index.json lists")) continue;
      if (!data::pool_file_complete(f.string())) {
        problem(f, "not a complete pool file");
        continue;
      }
      try {
        const io::h5::File h = io::h5::File::open_read(f.string());
        if (!h.has_attr("/", "data_digest")) {
          problem(f, "no data digest (written by an older version or edited): integrity not checkable");
          continue;
        }
        data::check_pool_file_intact(f.string());
        if (h.has_attr("/", "settings")) {
          const std::string diff =
              prov::first_difference(json::parse(h.attr_string("/", "settings")), settings, f.string());
          if (!diff.empty()) {
            problem(f, "inverted with other settings than index.json's: " + diff);
            continue;
          }
        }
        const int id = e.at("lora_id").get<int>();
        if (h.has_attr("/", "lora_digest") && lora_by_id.count(id)) {
          const std::string had = h.attr_string("/", "lora_digest");
          const std::string now = adapter_at(lora_by_id[id]);
          if (had != now) {
            problem(f, "inverted from LoRA weights digest " + had + ", but " + lora_by_id[id].string() + " is now " +
                           now + " (retrained since?)");
            continue;
          }
        }
      } catch (const std::exception& ex) {
        problem(f, ex.what());
        continue;
      }
      images += e.value("images", 0);
      ++ok;
    }
    if (ok != static_cast<int>(files.size())) return;
    reg_.pools[prov::file_digest(ip)] = dir_;
    note(std::to_string(ok) + " pool files, " + std::to_string(images) +
         " images, data digests intact, settings agree");
    link("zoo", zoo_d, reg_.zoo_manifest, index.value("zoo", ""), zoo_manifest_at);
    link("VFM", str(settings, "--model (content digest)"), reg_.models, index.value("model", ""), model_at);
  }

  void metatrain(const Output& o) {
    if (!need(dir_ / "metatrain.json", "written when meta-training finishes") ||
        !need(dir_ / model::kPeftWeights, "the meta-LoRA") || !safetensors_intact(dir_ / model::kPeftWeights))
      return;
    const json fp = o.marker.value("settings", json());
    const std::string model_d = str(fp, "model (content digest)");
    const std::string bd = model::recorded_base_digest(dir_.string());
    if (!model_d.empty() && bd != model_d) {
      problem(dir_ / model::kPeftWeights,
              "tuned on VFM digest " + (bd.empty() ? "(none)" : bd) + ", its fingerprint names " + model_d);
      return;
    }
    reg_.adapters[adapter_at(dir_)] = dir_;
    const json report = read_json(dir_ / "metatrain.json");
    note("meta-LoRA intact, " + std::to_string(report.value("steps", 0)) + " steps");
    link("pool", str(fp, "pool (index digest)"), reg_.pools, str(fp, "pool"), pool_index_at);
    link("VFM", model_d, reg_.models, str(fp, "model"), model_at);
  }

  void eval(const Output&) {
    if (!need(dir_ / "results.json", "written when the evaluation finishes")) {
      std::error_code ec;
      int rows = 0;
      if (stdfs::is_directory(dir_ / "partial", ec))
        for (const auto& e : stdfs::directory_iterator(dir_ / "partial"))
          rows += e.path().filename() != "settings.json";
      if (rows > 0) note(std::to_string(rows) + " finished parts under partial/ (re-run eval with the same options)");
      return;
    }
    const json r = read_json(dir_ / "results.json");
    if (!r.contains("inputs")) {
      problem(dir_ / "results.json", "no \"inputs\": written by an older version, provenance not recorded");
      return;
    }
    const json& in = r["inputs"];
    const auto path_of = [](const json& i) {
      const std::string a = i.value("absolute path", std::string());
      std::error_code ec;
      return !a.empty() && stdfs::exists(a, ec) ? a : i.value("path", std::string());
    };
    std::set<std::string> keys;
    if (in.contains("model")) {
      keys.insert("model");
      link("VFM", str(in["model"], "content digest"), reg_.models, path_of(in["model"]), model_at);
    }
    if (in.contains("zoo")) {
      keys.insert("zoo");
      link("zoo", str(in["zoo"], "content digest"), reg_.zoo_adapters, path_of(in["zoo"]), zoo_at);
    }
    const json metas = in.value("meta", json::object()), datas = in.value("data", json::object());
    for (const auto& [name, i] : metas.items()) {
      keys.insert("meta/" + name);
      link("meta-LoRA '" + name + "'", str(i, "content digest"), reg_.adapters, path_of(i), adapter_at);
    }
    for (const auto& [name, i] : datas.items()) {
      keys.insert("data/" + name);
      link("data '" + name + "'", str(i, "content digest"), {}, path_of(i), file_at);
    }
    int rows = 0;
    for (const auto& row : r.at("rows")) {
      ++rows;
      for (const auto& k : row.value("inputs", json::array()))
        if (!keys.count(k.get<std::string>()))
          problem(dir_ / "results.json", "a row names input '" + k.get<std::string>() + "', which \"inputs\" lacks");
    }
    notes_.insert(notes_.begin(), std::to_string(rows) + " result rows");
  }

  Report& report_;
  Registry& reg_;
  std::string kind_;
  stdfs::path dir_;
  int problems_before_ = 0;
  std::vector<std::string> notes_;
};

// A directory's kind: its marker's, else (no marker) the kind whose signature file it holds.
bool identify(const stdfs::path& dir, Output& o) {
  std::error_code ec;
  const stdfs::path marker = dir / prov::kMarker;
  if (stdfs::is_regular_file(marker, ec)) {
    try {
      o.marker = json::parse(fs::read_text(marker));
      o.kind = o.marker.value("kind", std::string());
    } catch (const std::exception&) {
      o.kind = "?";
    }
    o.dir = dir;
    return true;
  }
  for (const auto& k : kKinds)
    for (const auto& sig : prov::output_kind(k).signature)
      if (stdfs::exists(dir / sig, ec)) {
        // Work directories and finished ones share no signature; a checkpoint alone is a work dir.
        o.kind = k, o.dir = dir, o.marker = json();
        return true;
      }
  return false;
}

void walk(const stdfs::path& dir, int depth, std::vector<Output>& found) {
  Output o;
  if (identify(dir, o)) {
    found.push_back(o);
    return;  // an output's sub-directories (zoo LoRAs, eval/partial) are its own
  }
  if (depth == 0) return;
  std::error_code ec;
  std::vector<stdfs::path> subs;
  for (const auto& e : stdfs::directory_iterator(dir, ec))
    if (e.is_directory(ec) && !e.is_symlink(ec)) subs.push_back(e.path());
  std::sort(subs.begin(), subs.end());
  for (const auto& s : subs) walk(s, depth - 1, found);
}

}  // namespace

Report verify_run(const stdfs::path& run_dir) {
  std::error_code ec;
  if (!stdfs::is_directory(run_dir, ec)) throw InputError("verify: '" + run_dir.string() + "' is not a directory");
  std::vector<Output> found;
  walk(run_dir, 3, found);
  std::stable_sort(found.begin(), found.end(),
                   [](const Output& a, const Output& b) { return kind_rank(a.kind) < kind_rank(b.kind); });
  Report report;
  report.outputs = static_cast<int>(found.size());
  if (found.empty()) {
    report.findings.push_back(
        {true, "", run_dir.string(), "no lorarecycle output found (no .lorarecycle.json marker)"});
    report.problems = 1;
    return report;
  }
  Registry reg;
  Checker checker(report, reg);
  for (const auto& o : found) {
    if (kind_rank(o.kind) == static_cast<int>(kKinds.size())) {
      report.findings.push_back({true, o.kind, o.dir.string(), "unknown kind of output in its marker"});
      ++report.problems;
      continue;
    }
    checker.check(o);
  }
  return report;
}

}  // namespace lorarec::verify
