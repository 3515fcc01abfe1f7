// core/name_table.hpp: the name -> position table under ZipReader and Reader.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "core/name_table.hpp"

namespace ckpt {
namespace {

TEST(NameTable, FindsEveryNameRefusesDuplicatesAndGrowsPastItsReservation) {
  std::vector<std::string> names;
  const auto name_of = [&](size_t i) -> std::string_view { return names[i]; };
  NameTable t;
  EXPECT_EQ(t.find("a", name_of), NameTable::npos);  // never reset: empty
  t.reset(4);                                          // room for 4; 1,000 go in
  for (size_t i = 0; i < 1000; ++i) {
    names.push_back("layer." + std::to_string(i) + ".weight");
    ASSERT_TRUE(t.insert(names.back(), i, name_of)) << i;
  }
  for (size_t i = 0; i < names.size(); ++i) EXPECT_EQ(t.find(names[i], name_of), i);
  EXPECT_EQ(t.find("layer.1000.weight", name_of), NameTable::npos);
  EXPECT_EQ(t.find("", name_of), NameTable::npos);
  EXPECT_FALSE(t.insert("layer.7.weight", 5000, name_of));  // in already: nothing added
  EXPECT_EQ(t.find("layer.7.weight", name_of), 7u);
  t.reset(0);
  EXPECT_EQ(t.find("layer.7.weight", name_of), NameTable::npos);
}

}  // namespace
}  // namespace ckpt
