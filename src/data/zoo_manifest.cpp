#include "lorarecycle/data/zoo_manifest.h"

#include <algorithm>
#include <climits>
#include <cstdio>
#include <filesystem>
#include <map>

#include "lorarecycle/model/peft.h"
#include "lorarecycle/util/error.h"
#include "lorarecycle/util/fs.h"

namespace lorarec::data {
namespace {
using json = nlohmann::json;
namespace stdfs = std::filesystem;
}  // namespace

std::string zoo_entry_name(int id) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "lora_%03d", id);
  return buf;
}

bool zoo_entry_complete(const std::string& dir) {
  const stdfs::path d(dir);
  if (!stdfs::exists(d / model::kPeftWeights) || !stdfs::exists(d / model::kPeftConfig) ||
      !stdfs::exists(d / kZooTaskFile))
    return false;
  try {
    const json t = json::parse(fs::read_text(d / kZooTaskFile));
    return t.contains("heldout_accuracy");
  } catch (const std::exception&) {
    return false;
  }
}

ZooManifest ZooManifest::read(const std::string& dir) {
  const stdfs::path path = stdfs::path(dir) / kZooManifestFile;
  if (!stdfs::exists(path)) throw InputError(path.string() + ": missing (is --zoo a zoo directory?)");
  json content;
  try {
    content = json::parse(fs::read_text(path));
  } catch (const json::exception& e) {
    throw InputError(path.string() + ": invalid JSON (" + e.what() + ")");
  }
  return parse(dir, std::move(content));
}

ZooManifest ZooManifest::parse(const std::string& dir, json content) {
  ZooManifest m;
  m.dir = dir;
  m.content = std::move(content);
  try {
    for (const auto& e : m.content.at("loras")) {
      ZooEntry z;
      z.id = e.at("id").get<int>();
      z.dir = (stdfs::path(dir) / e.at("dir").get<std::string>()).string();
      z.classes = e.at("classes").get<std::vector<int64_t>>();
      z.heldout_accuracy = e.value("heldout_accuracy", 0.0);
      m.loras.push_back(std::move(z));
    }
  } catch (const json::exception& e) {
    throw InputError((stdfs::path(dir) / kZooManifestFile).string() + ": not a zoo manifest (" + e.what() + ")");
  }
  return m;
}

ZooManifest ZooManifest::build(const std::string& dir, const json& header, int num_loras) {
  ZooManifest m;
  m.dir = dir;
  m.content = header;
  m.content["loras"] = json::array();
  std::map<int64_t, int> coverage;  // dataset class -> LoRAs tuned on it
  double sum = 0;
  for (int id = 0; id < num_loras; ++id) {
    ZooEntry e;
    e.id = id;
    e.dir = (stdfs::path(dir) / zoo_entry_name(id)).string();
    if (!zoo_entry_complete(e.dir)) throw RuntimeError("zoo: " + e.dir + " is missing after every rank finished");
    const json t = json::parse(fs::read_text(stdfs::path(e.dir) / kZooTaskFile));
    e.classes = t.at("classes").get<std::vector<int64_t>>();
    e.heldout_accuracy = t.at("heldout_accuracy").get<double>();
    sum += e.heldout_accuracy;
    for (int64_t c : e.classes) ++coverage[c];
    m.content["loras"].push_back(
        {{"id", id}, {"dir", zoo_entry_name(id)}, {"classes", e.classes}, {"heldout_accuracy", e.heldout_accuracy}});
    m.loras.push_back(std::move(e));
  }
  m.content["mean_heldout_accuracy"] = sum / num_loras;
  int lo = INT32_MAX, hi = 0;
  json per_class = json::object();
  for (const auto& [c, k] : coverage) {
    per_class[std::to_string(c)] = k;
    lo = std::min(lo, k), hi = std::max(hi, k);
  }
  m.content["coverage"] = {{"classes", coverage.size()},
                           {"min_loras_per_class", lo},
                           {"max_loras_per_class", hi},
                           {"loras_per_class", per_class}};
  return m;
}

void ZooManifest::write() const { fs::write_text(stdfs::path(dir) / kZooManifestFile, content.dump(2) + "\n"); }

std::vector<std::string> ZooManifest::lora_dirs() const {
  std::vector<std::string> dirs;
  for (const ZooEntry& e : loras) dirs.push_back(e.dir);
  return dirs;
}

}  // namespace lorarec::data
