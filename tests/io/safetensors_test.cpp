#include "lorarecycle/io/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <iterator>

#include "lorarecycle/util/error.h"
#include "test_util.h"

namespace lorarec::io {
namespace {

// Writes a raw safetensors file: 8-byte length + header text + data bytes.
std::string write_raw(const test::TempDir& dir, const std::string& header, const std::string& data,
                      std::uint64_t declared_len = UINT64_MAX) {
  const std::string path = dir.file("raw.safetensors");
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  const std::uint64_t n = declared_len == UINT64_MAX ? header.size() : declared_len;
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((n >> (8 * i)) & 0xff));
  out << header << data;
  return path;
}

// Expects InputError whose message names the file and contains `needle`.
void expect_rejected(const std::string& path, const std::string& needle) {
  try {
    SafetensorsFile::open(path);
    FAIL() << "accepted a malformed file; expected an error containing '" << needle << "'";
  } catch (const InputError& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind(path, 0), 0u) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << "not one line: " << msg;
  }
}

TEST(Safetensors, RoundTripEveryDtype) {
  test::TempDir dir;
  std::map<std::string, at::Tensor> in;
  in["f32"] = at::randn({3, 4});
  in["f64"] = at::randn({2}, at::kDouble);
  in["f16"] = at::randn({5}).to(at::kHalf);
  in["bf16"] = at::randn({2, 2}).to(at::kBFloat16);
  in["i64"] = at::arange(6, at::kLong).view({2, 3});
  in["i32"] = at::arange(4, at::kInt);
  in["u8"] = at::arange(7, at::kByte);
  in["bool"] = at::tensor({1, 0, 1}, at::kByte).to(at::kBool);
  in["empty"] = at::empty({0, 3});
  in["scalar"] = at::tensor(2.5f).view({});
  const std::string path = dir.file("a.safetensors");
  save_safetensors(path, in, {{"format", "pt"}});
  const SafetensorsFile f = SafetensorsFile::open(path);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  ASSERT_EQ(f.tensors().size(), in.size());
  for (const auto& [name, t] : in) {
    const at::Tensor r = f.tensor(name);
    EXPECT_EQ(r.scalar_type(), t.scalar_type()) << name;
    EXPECT_EQ(r.sizes(), t.sizes()) << name;
    EXPECT_TRUE(at::equal(r, t)) << name;
  }
}

TEST(Safetensors, TensorsOutliveTheFileObjectAndAreWritableCopyOnWrite) {
  test::TempDir dir;
  const std::string path = dir.file("b.safetensors");
  save_safetensors(path, {{"x", at::ones({4})}});
  at::Tensor x;
  { x = SafetensorsFile::open(path).tensor("x"); }
  x.add_(1);  // private mapping: no crash, file untouched
  EXPECT_TRUE(at::equal(x, at::full({4}, 2.0f)));
  EXPECT_TRUE(at::equal(load_safetensors(path).at("x"), at::ones({4})));
}

// Inverts one byte of a file in place.
void flip_byte(const std::string& path, std::streamoff at) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(at);
  const char c = static_cast<char>(f.get() ^ 0x01);
  f.seekp(at);
  f.put(c);
}

TEST(Safetensors, AFlippedByteAnywhereIsDetected) {
  test::TempDir dir;
  const std::string path = dir.file("c.safetensors");
  save_safetensors(path, {{"a", at::arange(64, at::kFloat)}, {"b", at::ones({3}, at::kLong)}}, {{"step", "10"}});
  const SafetensorsFile ok = SafetensorsFile::open(path);
  EXPECT_EQ(ok.metadata().at(kDigestKey).size(), 16u);
  std::ifstream in(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::string backup = dir.file("c.bak");
  std::ofstream(backup, std::ios::binary) << bytes;
  // A byte of each tensor's data, and the metadata's "10" (a checkpoint's step).
  const auto data = static_cast<std::streamoff>(bytes.size() - 24 - 256);
  for (std::streamoff at : {data + 5, static_cast<std::streamoff>(bytes.size() - 2),
                            static_cast<std::streamoff>(bytes.find("\"10\"") + 2)}) {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
    flip_byte(path, at);
    expect_rejected(path, "corrupt file: its content digest is");
  }
  // A file from elsewhere (no digest) is read as before.
  const std::string header = R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";
  const std::string raw = write_raw(dir, header, std::string(4, '\0'));
  EXPECT_TRUE(at::equal(SafetensorsFile::open(raw).tensor("x"), at::zeros({1})));
}

TEST(Safetensors, MalformedFilesAreRejectedWithAClearError) {
  test::TempDir dir;
  const std::string ok = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::string data8(8, '\0');
  {
    const std::string path = dir.file("short.safetensors");
    std::ofstream(path, std::ios::binary) << "abc";
    expect_rejected(path, "shorter than the 8-byte header length");
  }
  expect_rejected(write_raw(dir, ok, data8, 200ull << 20), "exceeds the limit");
  expect_rejected(write_raw(dir, ok, data8, ok.size() + 100), "runs past the end of the file");
  expect_rejected(write_raw(dir, "{\"a\": [1, 2", data8), "not valid JSON");
  expect_rejected(write_raw(dir, "[1, 2, 3]", ""), "not a JSON object");
  expect_rejected(
      write_raw(
          dir,
          R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
          data8),
      "duplicate key 'a'");
  expect_rejected(write_raw(dir, R"({"a":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}})", data8),
                  "unknown dtype 'Q7'");
  expect_rejected(write_raw(dir, R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", data8), "non-negative");
  expect_rejected(write_raw(dir, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}})", data8),
                  "outside the data section");
  expect_rejected(write_raw(dir, R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", data8),
                  "do not match shape");
  expect_rejected(
      write_raw(
          dir,
          R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
          data8),
      "overlaps");
  expect_rejected(write_raw(dir, R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", data8), "hole");
  expect_rejected(write_raw(dir, ok, data8 + "xx"), "trailing bytes");
  expect_rejected(write_raw(dir, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", data8), "begin > end");
  expect_rejected(write_raw(dir, R"({"a":{"dtype":"F32","shape":[2]}})", data8), "lacks");
  expect_rejected(write_raw(dir, R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})", data8),
                  "unknown field");
  expect_rejected(write_raw(dir, R"({"__metadata__":{"k":1}})", ""), "not a string");
  expect_rejected(
      write_raw(dir, R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,4],"data_offsets":[0,8]}})", data8),
      "do not match shape");
}

TEST(Safetensors, IndexParserIsSafeOnEveryTruncation) {
  test::TempDir dir;
  const std::string path = dir.file("t.safetensors");
  save_safetensors(path, {{"w", at::randn({4, 4})}, {"b", at::randn({4})}});
  std::ifstream in(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), {});
  int rejected = 0;
  for (size_t n = 0; n < bytes.size(); ++n) {
    try {
      parse_safetensors_index(reinterpret_cast<const std::uint8_t*>(bytes.data()), n, "t");
    } catch (const InputError&) {
      ++rejected;
    }
  }
  EXPECT_EQ(rejected, static_cast<int>(bytes.size())) << "every truncation must be rejected";
  EXPECT_NO_THROW(parse_safetensors_index(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size(), "t"));
}

TEST(Safetensors, MissingTensorNamesTheFile) {
  test::TempDir dir;
  const std::string path = dir.file("m.safetensors");
  save_safetensors(path, {{"x", at::ones({1})}});
  try {
    SafetensorsFile::open(path).tensor("y");
    FAIL();
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("missing tensor 'y'"), std::string::npos);
  }
}

}  // namespace
}  // namespace lorarec::io
