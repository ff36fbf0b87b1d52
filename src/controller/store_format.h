// StoreFormat: brings an SQLite database's layout to the format version this code writes, or
// says why it cannot (docs/formats.md).
//
// The version lives in the database header (PRAGMA user_version). upgrade_format():
//   - empty database (no tables): creates the current layout;
//   - version 0 with tables (a store written before it was versioned): `unversioned` names the
//     version its layout has, or 0 for "not ours" (kDataLoss, nothing written);
//   - an older version: runs every step from it to the current one;
//   - the current version: nothing to do;
//   - a newer version: kFailedPrecondition naming both versions, nothing written.
// Then `check` must accept the layout (a database claiming our version but lacking our tables
// is kDataLoss, not a crash later).
//
// Crash safety: reading the version, every step and the new user_version happen in ONE
// transaction (SQLite's DDL and the header are transactional), so a SIGKILL or power loss at
// any point leaves the old format or the new one, never a mix; a failing step rolls back all.
//
// Threading: a function of the connection it is given, on the caller's thread.
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "testudo/status.h"

struct sqlite3;

namespace testudo::controller {

struct FormatStep {
  int from = 0;  // upgrades `from` to from + 1
  std::function<Status(sqlite3*)> apply;
};

struct StoreFormat {
  std::string name;            // for messages, e.g. "task store /home/u/.testudo/.../tasks.sqlite"
  int current = 1;             // the version this code writes
  std::string create;          // SQL creating the current layout in an empty database
  // The version of an unversioned database's layout (1..current), or 0: not this kind of store.
  std::function<StatusOr<int>(sqlite3*)> unversioned;
  // OK if the layout is the current version's; else kDataLoss saying what is wrong.
  std::function<Status(sqlite3*)> check;
  std::vector<FormatStep> steps;  // one per version below `current` that can be upgraded, by `from`
  // Converts an SQLite result code to a Status naming the store (where SQLite errors enter).
  std::function<Status(int rc, std::string_view what)> sqlite_error;
};

// Returns the version the database had before (0: it was empty and has been created).
StatusOr<int> upgrade_format(sqlite3* db, const StoreFormat& format);

// Helpers for `unversioned` and `check`: the column names of `table` in order (empty when
// there is no such table).
StatusOr<std::vector<std::string>> table_columns(sqlite3* db, std::string_view table,
                                                 const std::function<Status(int, std::string_view)>& sqlite_error);

}  // namespace testudo::controller
