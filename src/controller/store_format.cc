#include "controller/store_format.h"

#include <sqlite3.h>

#include <memory>

namespace testudo::controller {
namespace {

struct StmtFinalizer {
  void operator()(sqlite3_stmt* stmt) const { sqlite3_finalize(stmt); }
};
using StmtPtr = std::unique_ptr<sqlite3_stmt, StmtFinalizer>;

// Rolls back unless committed, so every early return leaves the database as it was.
class Transaction {
 public:
  explicit Transaction(sqlite3* db) : db_(db) {}
  ~Transaction() {
    if (!sqlite3_get_autocommit(db_)) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;

 private:
  sqlite3* db_;
};

Status exec(sqlite3* db, const std::string& sql, std::string_view what, const StoreFormat& format) {
  const int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr);
  if (rc != SQLITE_OK) return format.sqlite_error(rc, what);
  return ok_status();
}

StatusOr<std::int64_t> scalar(sqlite3* db, const char* sql, std::string_view what, const StoreFormat& format) {
  sqlite3_stmt* s = nullptr;
  int rc = sqlite3_prepare_v2(db, sql, -1, &s, nullptr);
  StmtPtr stmt(s);
  if (rc != SQLITE_OK) return format.sqlite_error(rc, what);
  rc = sqlite3_step(stmt.get());
  if (rc != SQLITE_ROW) return format.sqlite_error(rc, what);
  return sqlite3_column_int64(stmt.get(), 0);
}

}  // namespace

StatusOr<std::vector<std::string>> table_columns(sqlite3* db, std::string_view table,
                                                 const std::function<Status(int, std::string_view)>& sqlite_error) {
  sqlite3_stmt* s = nullptr;
  int rc = sqlite3_prepare_v2(db, "SELECT name FROM pragma_table_info(?1) ORDER BY cid", -1, &s, nullptr);
  StmtPtr stmt(s);
  if (rc != SQLITE_OK) return sqlite_error(rc, "read the layout");
  sqlite3_bind_text(stmt.get(), 1, table.data(), static_cast<int>(table.size()), SQLITE_STATIC);
  std::vector<std::string> names;
  while ((rc = sqlite3_step(stmt.get())) == SQLITE_ROW) {
    const auto* name = reinterpret_cast<const char*>(sqlite3_column_text(stmt.get(), 0));
    names.emplace_back(name == nullptr ? "" : name);
  }
  if (rc != SQLITE_DONE) return sqlite_error(rc, "read the layout");
  return names;
}

StatusOr<int> upgrade_format(sqlite3* db, const StoreFormat& format) {
  // IMMEDIATE: the write lock is taken before the version is read, so nobody can change the
  // database between reading its version and upgrading it.
  TESTUDO_RETURN_IF_ERROR(exec(db, "BEGIN IMMEDIATE", "begin the format upgrade", format));
  Transaction transaction(db);
  TESTUDO_ASSIGN_OR_RETURN(const std::int64_t found, scalar(db, "PRAGMA user_version", "read the format version", format));
  if (found > format.current) {
    return failed_precondition(format.name + ": format version " + std::to_string(found) +
                               " was written by a newer testudo; this one reads versions up to " +
                               std::to_string(format.current) +
                               " (use the newer testudo, or another profile; the file was not changed)");
  }
  if (found < 0) {
    return data_loss(format.name + ": format version " + std::to_string(found) + " is not a testudo version");
  }
  int version = static_cast<int>(found);
  bool created = false;
  if (version == 0) {
    TESTUDO_ASSIGN_OR_RETURN(const std::int64_t tables,
                             scalar(db, "SELECT COUNT(*) FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%'",
                                    "read the layout", format));
    if (tables == 0) {
      TESTUDO_RETURN_IF_ERROR(exec(db, format.create, "create the layout", format));
      version = format.current;
      created = true;
    } else {
      TESTUDO_ASSIGN_OR_RETURN(version, format.unversioned(db));
      if (version < 1 || version > format.current) {
        return data_loss(format.name + ": an SQLite database that is not a testudo store (unknown tables, no format "
                         "version); it was not changed");
      }
    }
  }
  const int before = created ? 0 : version;
  for (const FormatStep& step : format.steps) {
    if (step.from != version || version >= format.current) continue;
    Status st = step.apply(db);
    if (!st.ok()) {
      return st.with_context(format.name + ": upgrading format version " + std::to_string(version) + " to " +
                             std::to_string(version + 1) + " (nothing was changed)");
    }
    ++version;
  }
  if (version != format.current) {
    return failed_precondition(format.name + ": format version " + std::to_string(version) +
                               " cannot be upgraded by this testudo (it upgrades versions " +
                               std::to_string(format.steps.empty() ? format.current : format.steps.front().from) +
                               " to " + std::to_string(format.current) + ")");
  }
  TESTUDO_RETURN_IF_ERROR(format.check(db));
  if (version != found) {
    TESTUDO_RETURN_IF_ERROR(
        exec(db, "PRAGMA user_version=" + std::to_string(version), "write the format version", format));
  }
  TESTUDO_RETURN_IF_ERROR(exec(db, "COMMIT", "commit the format upgrade", format));
  return before;
}

}  // namespace testudo::controller
