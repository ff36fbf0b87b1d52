#include "cli/common_options.h"

#include <iostream>

#include "base/log.h"

namespace testudo::cli {

int report_failure(std::string_view program, const Status& status) {
  std::cerr << program << ": " << status.message() << "\n";
  return status.code() == StatusCode::kInvalidArgument ? kExitUsage : kExitError;
}

void CommonOptions::add_to(CLI::App& app) {
  app.add_option("--profile", profile, "Profile name: files live in $TESTUDO_HOME/profile_<name>")
      ->capture_default_str();
  app.add_option("--log-level", log_level, "debug, info, warning or error")->capture_default_str();
}

Status CommonOptions::apply_log_level() const {
  if (log_level == "debug") log::set_min_level(log::Level::kDebug);
  else if (log_level == "info") log::set_min_level(log::Level::kInfo);
  else if (log_level == "warning") log::set_min_level(log::Level::kWarning);
  else if (log_level == "error") log::set_min_level(log::Level::kError);
  else return invalid_argument("--log-level must be debug, info, warning or error");
  return ok_status();
}

}  // namespace testudo::cli
