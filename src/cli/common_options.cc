#include "cli/common_options.h"

#include <cmath>
#include <iostream>

#include "base/log.h"

namespace testudo::cli {

int report_failure(std::string_view program, const Status& status) {
  std::cerr << program << ": " << status.message() << "\n";
  return status.code() == StatusCode::kInvalidArgument ? kExitUsage : kExitError;
}

std::optional<int> parse_command_line(CLI::App& app, int argc, char** argv) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);  // prints help (code 0) or the error
    return code == 0 ? kExitOk : kExitUsage;
  }
  return std::nullopt;
}

namespace {

CLI::Validator seconds_validator(bool allow_zero) {
  return CLI::Validator(
      [allow_zero](std::string& text) -> std::string {
        double value = 0;
        const bool number = CLI::detail::lexical_cast(text, value) && std::isfinite(value);
        if (number && (value > 0 || (allow_zero && value == 0))) return "";
        return std::string("must be a number of seconds ") + (allow_zero ? "(0 or more)" : "above 0") + ", not '" +
               text + "'";
      },
      allow_zero ? "SECONDS>=0" : "SECONDS>0");
}

}  // namespace

CLI::Validator positive_seconds() { return seconds_validator(false); }
CLI::Validator non_negative_seconds() { return seconds_validator(true); }
std::chrono::milliseconds seconds(double s) { return std::chrono::milliseconds(static_cast<long long>(s * 1000)); }

void CommonOptions::add_to(CLI::App& app) {
  app.add_option("--profile", profile, "Profile name: files live in $TESTUDO_HOME/profile_<name>")
      ->envname("TESTUDO_PROFILE")
      ->capture_default_str();
  app.add_option("--log-level", log_level, "debug, info, warning or error")->capture_default_str();
  app.add_option("--log-max-bytes", log_max_bytes,
                 "Rotate a log file (--log-file, or a launcher's log) beyond this size, keeping 4 old ones (0: never)")
      ->capture_default_str();
}

void CommonOptions::apply_log_rotation() const { log::set_rotation(log_max_bytes, kLogFilesKept); }

Status CommonOptions::apply_log_level() const {
  if (log_level == "debug") log::set_min_level(log::Level::kDebug);
  else if (log_level == "info") log::set_min_level(log::Level::kInfo);
  else if (log_level == "warning") log::set_min_level(log::Level::kWarning);
  else if (log_level == "error") log::set_min_level(log::Level::kError);
  else return invalid_argument("--log-level must be debug, info, warning or error");
  return ok_status();
}

}  // namespace testudo::cli
