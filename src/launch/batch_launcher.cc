#include "launch/batch_launcher.h"

#include <cctype>
#include <fstream>
#include <map>
#include <sstream>

namespace testudo::launch {
namespace {

// The engines are the job's tasks: srun starts one per task under Slurm; PBS has no launcher
// of its own, so mpiexec (which reads the PBS node file) does.
constexpr char kSlurmTemplate[] = R"(#!/bin/sh
#SBATCH --job-name={job_name}
#SBATCH --ntasks={n}
#SBATCH --output={log}
{queue_directive}
srun {engine_command}
)";

constexpr char kPbsTemplate[] = R"(#!/bin/sh
#PBS -N {job_name}
#PBS -l nodes={n}
#PBS -j oe
#PBS -o {log}
{queue_directive}
cd "$PBS_O_WORKDIR" 2>/dev/null || true
mpiexec -n {n} {engine_command}
)";

StatusOr<std::string> read_template(const std::string& path) {
  std::ifstream in(path);
  if (!in) return invalid_argument("cannot read the batch template " + path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

bool is_name_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }

}  // namespace

const char* batch_system_name(BatchSettings::System system) {
  return system == BatchSettings::System::kSlurm ? "slurm" : "pbs";
}

StatusOr<std::string> batch_script(const BatchSettings& settings, const BatchJob& job) {
  std::string text;
  if (settings.template_file.empty()) {
    text = settings.system == BatchSettings::System::kSlurm ? kSlurmTemplate : kPbsTemplate;
  } else {
    TESTUDO_ASSIGN_OR_RETURN(text, read_template(settings.template_file));
  }
  const bool slurm = settings.system == BatchSettings::System::kSlurm;
  const std::map<std::string, std::string> values = {
      {"n", std::to_string(job.engines)},
      {"job_name", job.job_name},
      {"queue", settings.queue},
      {"queue_directive", settings.queue.empty() ? ""
                          : slurm                ? "#SBATCH --partition=" + settings.queue
                                                 : "#PBS -q " + settings.queue},
      {"log", job.log},
      {"profile", job.profile},
      {"engine_command", job.engine_command},
  };
  std::string out;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const bool shells = i > 0 && text[i - 1] == '$';
    if (text[i] != '{' || shells) {
      out += text[i];
      continue;
    }
    std::size_t end = i + 1;
    while (end < text.size() && is_name_char(text[end])) ++end;
    if (end == i + 1 || end >= text.size() || text[end] != '}') {
      out += text[i];  // not a variable: a brace of the script itself
      continue;
    }
    const std::string name = text.substr(i + 1, end - i - 1);
    auto it = values.find(name);
    if (it == values.end()) {
      return invalid_argument("unknown variable {" + name + "} in the batch template " +
                              (settings.template_file.empty() ? std::string("(built in)") : settings.template_file) +
                              " (known: {n} {job_name} {queue} {queue_directive} {log} {profile} {engine_command})");
    }
    out += it->second;
    i = end;
  }
  return out;
}

std::vector<std::string> submit_command(const BatchSettings& settings, const std::string& script_path) {
  std::vector<std::string> argv;
  if (settings.system == BatchSettings::System::kSlurm) {
    argv = {"sbatch", "--parsable"};
  } else {
    argv = {"qsub"};
  }
  argv.insert(argv.end(), settings.submit_args.begin(), settings.submit_args.end());
  argv.push_back(script_path);
  return argv;
}

std::vector<std::string> cancel_command(BatchSettings::System system, const std::string& job_id) {
  if (system == BatchSettings::System::kSlurm) return {"scancel", job_id};
  return {"qdel", job_id};
}

StatusOr<std::string> job_id_from_submit_output(BatchSettings::System system, const std::string& out) {
  // The first word of the output ("1234;cluster" from sbatch --parsable: the part before ';').
  std::string id;
  for (char c : out) {
    const bool ends = std::isspace(static_cast<unsigned char>(c)) || (system == BatchSettings::System::kSlurm && c == ';');
    if (ends) {
      if (!id.empty()) break;
      continue;
    }
    id += c;
  }
  const bool looks_right = !id.empty() && std::isdigit(static_cast<unsigned char>(id.front())) &&
                           id.find_first_of("'\"\\$`;&| ") == std::string::npos && id.size() < 128;
  if (!looks_right) {
    return unavailable(std::string(system == BatchSettings::System::kSlurm ? "sbatch" : "qsub") +
                       " printed no job id: '" + out.substr(0, 200) + "'");
  }
  return id;
}

}  // namespace testudo::launch
