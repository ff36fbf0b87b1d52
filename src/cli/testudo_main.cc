// The `testudo` executable: the whole command line lives in main.cc (library testudo_cli, which
// the tests' hostile controller, tests/hostile_controller.cc, links too).
namespace testudo::cli {
int main(int argc, char** argv);
}

int main(int argc, char** argv) { return testudo::cli::main(argc, argv); }
