#include "cli/profile_config.h"

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace testudo::cli {
namespace {

constexpr std::uintmax_t kMaxConfigBytes = 1 << 20;

// The option's value(s) as CLI11 parses them from a command line.
StatusOr<std::vector<std::string>> as_arguments(const nlohmann::json& value) {
  auto scalar = [](const nlohmann::json& v) -> StatusOr<std::string> {
    if (v.is_string()) return v.get<std::string>();
    if (v.is_boolean()) return std::string(v.get<bool>() ? "true" : "false");
    if (v.is_number()) return v.dump();
    return invalid_argument("expected a string, number or boolean");
  };
  std::vector<std::string> out;
  if (value.is_array()) {
    for (const auto& item : value) {
      TESTUDO_ASSIGN_OR_RETURN(std::string s, scalar(item));
      out.push_back(std::move(s));
    }
    return out;
  }
  TESTUDO_ASSIGN_OR_RETURN(std::string s, scalar(value));
  out.push_back(std::move(s));
  return out;
}

}  // namespace

Status apply_profile_config(CLI::App& command, const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return ok_status();
  if (std::filesystem::file_size(path, ec) > kMaxConfigBytes) {
    return invalid_argument(path + ": larger than 1 MiB, which no settings file is");
  }
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  if (!in) return invalid_argument("cannot read " + path);
  auto j = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return invalid_argument(path + ": not a JSON object");

  const std::string command_name = "testudo " + command.get_parent()->get_name() + " " + command.get_name();
  for (const auto& [key, value] : j.items()) {
    CLI::Option* option = key == "help" ? nullptr : command.get_option_no_throw("--" + key);
    if (option == nullptr) {
      return invalid_argument(path + ": unknown setting \"" + key + "\" (settings are the long options of `" +
                              command_name + "` without dashes, e.g. \"n\", \"ip\", \"tag\")");
    }
    if (option->count() > 0) continue;  // the command line wins
    auto arguments = as_arguments(value);
    if (!arguments.ok()) return invalid_argument(path + ": \"" + key + "\": " + arguments.status().message());
    try {
      option->add_result(std::move(arguments).value());
      option->run_callback();
    } catch (const CLI::Error& e) {
      return invalid_argument(path + ": \"" + key + "\": " + e.what());
    }
  }
  return ok_status();
}

}  // namespace testudo::cli
