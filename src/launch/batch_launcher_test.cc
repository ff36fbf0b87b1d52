#include "launch/batch_launcher.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>

namespace testudo::launch {
namespace {

BatchJob job() {
  BatchJob j;
  j.engines = 8;
  j.job_name = "testudo-lab";
  j.log = "/home/u/.testudo/profile_lab/log/engine-3.log";
  j.profile = "lab";
  j.engine_command = "'/usr/bin/testudo-engine' '--profile' 'lab'";
  return j;
}

TEST(BatchLauncherTest, SlurmScriptRunsTheEnginesAsTasks) {
  BatchSettings slurm;
  slurm.queue = "gpu";
  auto script = batch_script(slurm, job());
  ASSERT_TRUE(script.ok()) << script.status().to_string();
  EXPECT_NE(script->find("#SBATCH --ntasks=8\n"), std::string::npos) << *script;
  EXPECT_NE(script->find("#SBATCH --job-name=testudo-lab\n"), std::string::npos);
  EXPECT_NE(script->find("#SBATCH --partition=gpu\n"), std::string::npos);
  EXPECT_NE(script->find("#SBATCH --output=/home/u/.testudo/profile_lab/log/engine-3.log\n"), std::string::npos);
  EXPECT_NE(script->find("srun '/usr/bin/testudo-engine' '--profile' 'lab'\n"), std::string::npos);
  EXPECT_EQ(submit_command(slurm, "/run/x.slurm"), (std::vector<std::string>{"sbatch", "--parsable", "/run/x.slurm"}));
  EXPECT_EQ(cancel_command(BatchSettings::System::kSlurm, "42"), (std::vector<std::string>{"scancel", "42"}));
}

// Debian has no PBS server: what the launcher would run is checked here.
TEST(BatchLauncherTest, PbsScriptAndCommands) {
  BatchSettings pbs;
  pbs.system = BatchSettings::System::kPbs;
  pbs.submit_args = {"-A", "project7"};
  auto script = batch_script(pbs, job());
  ASSERT_TRUE(script.ok());
  EXPECT_NE(script->find("#PBS -N testudo-lab\n"), std::string::npos) << *script;
  EXPECT_NE(script->find("#PBS -l nodes=8\n"), std::string::npos);
  EXPECT_EQ(script->find("#PBS -q"), std::string::npos) << "no queue asked for, none named";
  EXPECT_NE(script->find("mpiexec -n 8 '/usr/bin/testudo-engine' '--profile' 'lab'\n"), std::string::npos);
  EXPECT_EQ(submit_command(pbs, "/run/x.pbs"), (std::vector<std::string>{"qsub", "-A", "project7", "/run/x.pbs"}));
  EXPECT_EQ(cancel_command(BatchSettings::System::kPbs, "17.server"), (std::vector<std::string>{"qdel", "17.server"}));
}

TEST(BatchLauncherTest, JobIdsFromSubmitOutput) {
  using System = BatchSettings::System;
  EXPECT_EQ(*job_id_from_submit_output(System::kSlurm, "1234\n"), "1234");
  EXPECT_EQ(*job_id_from_submit_output(System::kSlurm, "1234;cluster2\n"), "1234");
  EXPECT_EQ(*job_id_from_submit_output(System::kPbs, "17.pbs-server\n"), "17.pbs-server");
  EXPECT_EQ(*job_id_from_submit_output(System::kPbs, "17.pbs-server extra\n"), "17.pbs-server");
  for (const char* bad : {"", "\n", "Submitted batch job", "$(id)", "`id`"}) {
    EXPECT_FALSE(job_id_from_submit_output(System::kSlurm, bad).ok()) << bad;
  }
}

TEST(BatchLauncherTest, UserTemplatesKeepShellBracesAndRefuseUnknownVariables) {
  const std::string path = ::testing::TempDir() + "/template.sbatch";
  {
    std::ofstream(path) << "#!/bin/sh\n#SBATCH -n {n}\nexport X=${HOME}\n[ -d {profile} ] || true\nsrun {engine_command}\n";
  }
  BatchSettings settings;
  settings.template_file = path;
  auto script = batch_script(settings, job());
  ASSERT_TRUE(script.ok()) << script.status().to_string();
  EXPECT_NE(script->find("export X=${HOME}\n"), std::string::npos) << *script;
  EXPECT_NE(script->find("[ -d lab ]"), std::string::npos);
  {
    std::ofstream(path) << "#SBATCH --mem={memory}\n";
  }
  auto bad = batch_script(settings, job());
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("{memory}"), std::string::npos);
  EXPECT_NE(bad.status().message().find(path), std::string::npos);
  settings.template_file = path + ".missing";
  EXPECT_EQ(batch_script(settings, job()).status().code(), StatusCode::kInvalidArgument);
  std::remove(path.c_str());
}

}  // namespace
}  // namespace testudo::launch
