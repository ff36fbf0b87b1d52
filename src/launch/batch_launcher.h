// Engines as one job of a batch system: Slurm (sbatch/scancel) or PBS (qsub/qdel). A batch
// script made from a template (a built-in one, or the user's with the same variables) starts
// the engines as the job's tasks; the job id is kept in the profile's pid file, and stopping
// the cluster or the engine set cancels the job. ipyparallel's batch templates are the model:
// the variables are {n}, {job_name}, {queue}, {queue_directive}, {log}, {profile} and
// {engine_command} (a $ before a brace leaves it to the shell: ${HOME}).
// Thread-safety: pure functions.
#pragma once

#include <string>
#include <vector>

#include "testudo/status.h"

namespace testudo::launch {

struct BatchSettings {
  enum class System { kSlurm, kPbs };
  System system = System::kSlurm;
  std::string template_file;             // empty: the built-in template of `system`
  std::string queue;                     // Slurm partition / PBS queue; empty: the default
  std::vector<std::string> submit_args;  // more sbatch/qsub arguments
};

const char* batch_system_name(BatchSettings::System system);  // "slurm", "pbs"

struct BatchJob {
  int engines = 0;
  std::string job_name;        // e.g. testudo-<profile>
  std::string log;             // where the job's output goes
  std::string profile;
  std::string engine_command;  // one engine, shell-quoted: "'/usr/bin/testudo' 'engine' '--profile' 'p'"
};

// The script for `job`: the template (the built-in one, or settings.template_file, read here)
// with every variable replaced. kInvalidArgument naming an unknown {variable} and the file.
StatusOr<std::string> batch_script(const BatchSettings& settings, const BatchJob& job);

// argv that submits the script at `script_path` / cancels `job_id`.
std::vector<std::string> submit_command(const BatchSettings& settings, const std::string& script_path);
std::vector<std::string> cancel_command(BatchSettings::System system, const std::string& job_id);

// The job id a submission printed ("1234" from `sbatch --parsable`, possibly "1234;cluster";
// "1234.server" from qsub). kUnavailable when there is none.
StatusOr<std::string> job_id_from_submit_output(BatchSettings::System system, const std::string& out);

}  // namespace testudo::launch
