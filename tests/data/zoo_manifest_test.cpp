#include "lorarecycle/data/zoo_manifest.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <filesystem>

#include "lorarecycle/model/peft.h"
#include "lorarecycle/util/error.h"
#include "lorarecycle/util/fs.h"
#include "test_util.h"

namespace lorarec::data {
namespace {
namespace stdfs = std::filesystem;
using json = nlohmann::json;

// A finished zoo entry as far as the manifest is concerned: adapter files and a task.json.
void write_entry(const stdfs::path& zoo, int id, const std::vector<int64_t>& classes, double acc) {
  const stdfs::path d = zoo / zoo_entry_name(id);
  stdfs::create_directories(d);
  fs::write_text(d / model::kPeftWeights, "w");
  fs::write_text(d / model::kPeftConfig, "{}");
  fs::write_text(d / kZooTaskFile, json({{"classes", classes}, {"heldout_accuracy", acc}}).dump());
}

TEST(ZooManifest, BuildsCoverageWritesAndReadsBack) {
  test::TempDir tmp;
  const stdfs::path zoo = tmp.path() / "zoo";
  write_entry(zoo, 0, {4, 7, 9}, 80);
  write_entry(zoo, 1, {7, 2, 4}, 60);
  EXPECT_EQ(zoo_entry_name(7), "lora_007");
  EXPECT_TRUE(zoo_entry_complete((zoo / "lora_000").string()));
  const ZooManifest m = ZooManifest::build(zoo.string(), {{"model", "vfm"}, {"num_loras", 2}}, 2);
  EXPECT_EQ(m.content.at("model"), "vfm");
  EXPECT_DOUBLE_EQ(m.content.at("mean_heldout_accuracy").get<double>(), 70.0);
  const json& cov = m.content.at("coverage");
  EXPECT_EQ(cov.at("classes"), 4);  // 2, 4, 7, 9
  EXPECT_EQ(cov.at("min_loras_per_class"), 1);
  EXPECT_EQ(cov.at("max_loras_per_class"), 2);
  EXPECT_EQ(cov.at("loras_per_class"), json({{"2", 1}, {"4", 2}, {"7", 2}, {"9", 1}}));
  EXPECT_FALSE(stdfs::exists(zoo / kZooManifestFile));  // build does not write
  m.write();
  const ZooManifest r = ZooManifest::read(zoo.string());
  EXPECT_EQ(r.content, m.content);
  ASSERT_EQ(r.loras.size(), 2u);
  EXPECT_EQ(r.loras[1].id, 1);
  EXPECT_EQ(r.loras[1].dir, (zoo / "lora_001").string());
  EXPECT_EQ(r.loras[1].classes, (std::vector<int64_t>{7, 2, 4}));
  EXPECT_DOUBLE_EQ(r.loras[0].heldout_accuracy, 80.0);
  EXPECT_EQ(r.lora_dirs(), (std::vector<std::string>{(zoo / "lora_000").string(), (zoo / "lora_001").string()}));
}

TEST(ZooManifest, BuildNamesAMissingEntry) {
  test::TempDir tmp;
  write_entry(tmp.path(), 0, {1, 2}, 50);
  EXPECT_THROW_MSG(ZooManifest::build(tmp.path().string(), json::object(), 2), RuntimeError,
                   "lora_001 is missing after every rank finished");
  stdfs::remove(tmp.path() / "lora_000" / kZooTaskFile);
  EXPECT_FALSE(zoo_entry_complete((tmp.path() / "lora_000").string()));
}

TEST(ZooManifest, ReadRefusesWhatIsNotAManifest) {
  test::TempDir tmp;
  EXPECT_THROW_MSG(ZooManifest::read(tmp.path().string()), InputError, "is --zoo a zoo directory?");
  fs::write_text(tmp.path() / kZooManifestFile, "{\"loras\": [");
  EXPECT_THROW_MSG(ZooManifest::read(tmp.path().string()), InputError, "manifest.json: invalid JSON");
  fs::write_text(tmp.path() / kZooManifestFile, "{\"loras\": [{\"id\": 0}]}");
  EXPECT_THROW_MSG(ZooManifest::read(tmp.path().string()), InputError, "manifest.json: not a zoo manifest");
}

}  // namespace
}  // namespace lorarec::data
