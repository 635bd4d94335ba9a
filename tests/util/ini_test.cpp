#include "lorarecycle/util/ini.h"

#include <gtest/gtest.h>

#include "lorarecycle/util/error.h"

namespace lorarec {
namespace {

TEST(Ini, SectionsKeysCommentsAndLineNumbers) {
  const auto e = ini::parse("# c\nlog-level = debug\n\n[embed]\n; c\nbatch-size=8 \n", "x.ini");
  ASSERT_EQ(e.size(), 2u);
  EXPECT_EQ(e[0].section, "");
  EXPECT_EQ(e[0].key, "log-level");
  EXPECT_EQ(e[0].value, "debug");
  EXPECT_EQ(e[1].section, "embed");
  EXPECT_EQ(e[1].value, "8");
  EXPECT_EQ(e[1].line, 6);
}

TEST(Ini, InlineCommentsAfterABlankAreDropped) {
  const auto e = ini::parse("[zoo]\nepochs = 3  # paper: 10\ndata = a#b.h5\t; c\nname = x;y\n[embed] # c\n", "x.ini");
  ASSERT_EQ(e.size(), 3u);
  EXPECT_EQ(e[0].value, "3");
  EXPECT_EQ(e[1].value, "a#b.h5");
  EXPECT_EQ(e[2].value, "x;y");
}

TEST(Ini, MalformedLinesNameFileAndLine) {
  try {
    ini::parse("[ok]\nno equals sign\n", "bad.ini");
    FAIL() << "no error";
  } catch (const InputError& err) {
    EXPECT_NE(std::string(err.what()).find("bad.ini:2"), std::string::npos) << err.what();
  }
  EXPECT_THROW(ini::parse("[unterminated\n", "b.ini"), InputError);
  EXPECT_THROW(ini::parse(" = v\n", "b.ini"), InputError);
}

}  // namespace
}  // namespace lorarec
