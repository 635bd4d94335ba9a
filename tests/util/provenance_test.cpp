#include "lorarecycle/util/provenance.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>

#include "lorarecycle/util/error.h"
#include "lorarecycle/util/fs.h"

namespace lorarec::prov {
namespace {

namespace stdfs = std::filesystem;

struct TempDir {
  stdfs::path path;
  TempDir() {
    path = stdfs::temp_directory_path() / ("lorarec_prov_" + std::to_string(::getpid()) + "_" +
                                           ::testing::UnitTest::GetInstance()->current_test_info()->name());
    stdfs::remove_all(path);
    stdfs::create_directories(path);
  }
  ~TempDir() { stdfs::remove_all(path); }
};

void write(const stdfs::path& p, const std::string& text) {
  stdfs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << text;
}

// Every file under dir with its content: what "nothing on disk changed" compares.
std::string tree(const stdfs::path& dir) {
  std::string out;
  for (const auto& e : stdfs::recursive_directory_iterator(dir))
    out += e.path().string() + (e.is_regular_file() ? "=" + fs::read_text(e.path()) : "/") + "\n";
  return out;
}

TEST(Provenance, FileDigestFollowsTheContentNotTheName) {
  TempDir t;
  write(t.path / "a", std::string(3000000, 'x') + "tail");
  write(t.path / "b", std::string(3000000, 'x') + "tail");
  write(t.path / "c", std::string(3000000, 'x') + "tall");
  EXPECT_EQ(file_digest(t.path / "a"), file_digest(t.path / "b"));
  EXPECT_NE(file_digest(t.path / "a"), file_digest(t.path / "c"));
  EXPECT_EQ(file_digest(t.path / "a").size(), 16u);
  write(t.path / "d", "");
  write(t.path / "e", std::string(1, '\0'));
  EXPECT_NE(file_digest(t.path / "d"), file_digest(t.path / "e"));  // the length counts
  EXPECT_THROW(file_digest(t.path / "missing"), InputError);
}

TEST(Provenance, ModelDigestCoversWeightsAndConfigOnly) {
  TempDir t;
  write(t.path / "m/config.json", "{\"hidden_size\": 8}");
  write(t.path / "m/model.safetensors", "weights");
  write(t.path / "m/notes.txt", "anything");
  const std::string d0 = model_digest(t.path / "m");
  write(t.path / "m/notes.txt", "changed");                               // not part of the model
  write(t.path / "m/pytorch_model.bin", "converted and may be deleted");  // not read by the loaders
  EXPECT_EQ(model_digest(t.path / "m"), d0);
  write(t.path / "m/preprocessor_config.json", "{\"image_mean\": [0.5, 0.5, 0.5]}");  // read: counts
  const std::string d1 = model_digest(t.path / "m");
  EXPECT_NE(d1, d0);
  write(t.path / "m/model.safetensors", "weightz");  // same size: the cache key has the mtime too
  stdfs::last_write_time(t.path / "m/model.safetensors",
                         stdfs::last_write_time(t.path / "m/config.json") + std::chrono::seconds(5));
  EXPECT_NE(model_digest(t.path / "m"), d1);
}

TEST(Provenance, NewEmptyOrOwnDirectoriesAreAccepted) {
  TempDir t;
  EXPECT_TRUE(check_output_dir(t.path / "new/zoo", "zoo").empty());
  stdfs::create_directories(t.path / "empty");
  EXPECT_TRUE(check_output_dir(t.path / "empty", "zoo").empty());
  claim_output_dir(t.path / "z", "zoo", {{"--epochs", 3}});
  const json m = check_output_dir(t.path / "z", "zoo");
  EXPECT_EQ(m.at("kind"), "zoo");
  EXPECT_EQ(m.at("settings").at("--epochs"), 3);
  // An output of this kind from before markers: adopted.
  write(t.path / "old/manifest.json", "{}");
  stdfs::create_directories(t.path / "old/lora_000");
  EXPECT_NO_THROW(check_output_dir(t.path / "old", "zoo"));
}

TEST(Provenance, OtherKindsAndForeignContentAreRefusedWithoutChangingAnything) {
  TempDir t;
  claim_output_dir(t.path / "z", "zoo", nullptr);
  // A zoo LoRA directory is not a meta-LoRA directory (task.json is not metatrain's).
  write(t.path / "z/lora_000/adapter_model.safetensors", "w");
  write(t.path / "z/lora_000/adapter_config.json", "{}");
  write(t.path / "z/lora_000/task.json", "{}");
  write(t.path / "stuff/holiday.jpg", "jpg");
  write(t.path / "afile", "x");
  const std::string before = tree(t.path);
  try {
    check_output_dir(t.path / "z/lora_000", "metatrain");
    FAIL() << "not refused";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("task.json"), std::string::npos) << e.what();
  }
  try {
    check_output_dir(t.path / "z", "pool");
    FAIL() << "not refused";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("lorarecycle zoo"), std::string::npos) << e.what();
  }
  EXPECT_THROW(check_output_dir(t.path / "stuff", "zoo"), InputError);
  EXPECT_THROW(check_output_dir(t.path / "afile", "zoo"), InputError);
  EXPECT_THROW(check_output_dir(t.path / "afile/sub", "zoo"), InputError);
  EXPECT_EQ(tree(t.path), before);
}

TEST(Provenance, OutputFilesAreCheckedBeforeWork) {
  TempDir t;
  EXPECT_NO_THROW(check_output_file(t.path / "f.h5", "--out"));
  EXPECT_THROW(check_output_file(t.path / "new/f.h5", "--out"), InputError);  // no such directory
  try {
    check_output_file(t.path, "embed: --out");
    FAIL() << "a directory accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("is a directory"), std::string::npos) << e.what();
  }
  write(t.path / "file", "x");
  EXPECT_THROW(check_output_file(t.path / "file/f.h5", "--out"), InputError);
}

TEST(Provenance, FirstDifferenceNamesTheSettingAndBothValues) {
  const json had = {{"--epochs", 3}, {"--lr", 0.001}, {"--data (content digest)", "aaaa"}};
  json now = had;
  EXPECT_EQ(first_difference(had, now, "zoo/lora_000"), "");
  now["--epochs"] = 1;
  EXPECT_EQ(first_difference(had, now, "zoo/lora_000"), "setting --epochs: 3 in zoo/lora_000, 1 now");
  now = had;
  now["--data (content digest)"] = "bbbb";
  now["--epochs"] = 1;  // keys in order: --data ... comes first
  EXPECT_EQ(first_difference(had, now, "x"), "setting --data (content digest): aaaa in x, bbbb now");
  now = had;
  now["--new"] = true;
  EXPECT_EQ(first_difference(had, now, "x"), "setting --new: (none) in x, true now");
  now = had;
  now.erase("--lr");
  EXPECT_EQ(first_difference(had, now, "x"), "setting --lr: 0.001 in x, (none) now");
}

}  // namespace
}  // namespace lorarec::prov
