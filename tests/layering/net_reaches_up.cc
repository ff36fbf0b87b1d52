// Must NOT compile: net/ sits below the controller, so the controller's headers are not on
// net's include path (see testudo_library in the top-level CMakeLists.txt). The test
// layering_is_enforced_by_the_build builds this file and expects exactly that error.
#include "controller/requests.h"
#include "net/net.h"

int main() { return 0; }
