// Target selection on the command line, as ipyparallel's rc[...] indexing:
//   "all" (every engine), "3", "0,2,5" (engine ids), "::2", "1::2", "0:3", "-1" (Python
//   slices and negative indexes over the sorted list of engine ids).
#pragma once

#include <string>
#include <vector>

#include "testudo/client.h"
#include "testudo/status.h"

namespace testudo::cli {

StatusOr<std::vector<EngineId>> select_targets(const std::string& spec, const std::vector<EngineId>& engine_ids);

}  // namespace testudo::cli
