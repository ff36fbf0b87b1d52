// PythonRuntime: one embedded CPython interpreter and the engine's user namespace.
// It runs requests that have already been authenticated and routed to this engine.
//
// Threading: NOT thread-safe. create(), every call and destruction must happen on the same
// thread, the engine's main thread (so SIGINT can later interrupt user code). Only one
// PythonRuntime may exist per process (CPython has one main interpreter).
//
// Python.h and pybind11 stay in the .cc: this header has no Python types.
#pragma once

#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/shared_bytes.h"
#include "testudo/status.h"

namespace testudo::engine {

struct PythonRuntimeOptions {
  // Reported as sys.executable inside the engine so that subprocess/multiprocessing in user
  // code starts the same interpreter. Default: the interpreter the build was configured with.
  std::string executable;
  // Value of the variable `__testudo_engine_id__` in the user namespace (-1: unknown yet).
  int engine_id = -1;
  // Large result buffers leave without a copy: their SharedBytes point into Python objects.
  // When the last reference goes (after sending: on the network thread, or on the Python
  // thread between calls, without the GIL), the Python object cannot be released there; it
  // is queued, and this is called, from that thread, so the owner can make the Python
  // thread call release_sent_buffers() soon.
  std::function<void()> on_buffers_to_release;
  // Called on the Python thread, while a request runs, with chunks of its output
  // (stream 1: stdout, 2: stderr) as they are written; may be empty (no live output).
  std::function<void(int stream, std::string text)> on_output;
  // stdout and stderr kept per request (characters); the rest is dropped with a note.
  std::uint64_t max_output_chars = 64ull << 20;
  // A pickled result larger than this is an error (MemoryError) instead of a reply.
  std::uint64_t max_result_bytes = 2ull << 30;
};

// What one request produced. On error, `ok` is false and ename/evalue/traceback describe the
// Python exception as the user would see it (traceback as formatted text). stdout/stderr are
// what the request wrote to sys.stdout/sys.stderr while it ran, captured per request.
struct TaskOutcome {
  bool ok = true;
  std::string ename;
  std::string evalue;
  std::string traceback;
  std::string stdout_text;
  std::string stderr_text;
  // The result value: for pickled results [pickle (protocol 5), out-of-band buffer...];
  // for repr results one UTF-8 text per requested name.
  std::vector<SharedBytes> value_segments;
};

class PythonRuntime {
 public:
  static StatusOr<std::unique_ptr<PythonRuntime>> create(const PythonRuntimeOptions& options);
  ~PythonRuntime();
  PythonRuntime(const PythonRuntime&) = delete;
  PythonRuntime& operator=(const PythonRuntime&) = delete;

  // exec(code) in the user namespace (compiled with filename "<testudo-execute>").
  // On success one value segment comes back, JSON (UTF-8): {"execution_count": n}, as an
  // IPython kernel counts (display_result executes count one each, failed or not). With
  // display_result, a trailing expression's value, unless None, adds "data" (mime type ->
  // text, as IPython's display formatter gives it; binary types in base64) and "metadata":
  // IPython's execute_result, what ipyparallel shows as Out[...].
  TaskOutcome execute(std::string_view code, bool display_result = false);

  // segments[0]: pickle of a dict {name: value}; segments[1..]: its out-of-band buffers
  // (pickle protocol 5). The dict is merged into the namespace.
  TaskOutcome push_pickled(std::span<const SharedBytes> segments);

  // Each pair is (name, Python literal text), evaluated with ast.literal_eval (never eval);
  // a bad name (not an identifier) or bad literal is a Python error in the outcome.
  TaskOutcome push_literals(const std::vector<std::pair<std::string, std::string>>& values);

  // Reply value: [pickle of the value when names.size() == 1, else of the list of values;
  // out-of-band buffers...]. A missing name is NameError.
  TaskOutcome pull_pickled(const std::vector<std::string>& names);

  // Reply value: one segment per name holding repr(value). A missing name is NameError.
  TaskOutcome pull_repr(const std::vector<std::string>& names);

  // segments[0]: pickle (cloudpickle-compatible) of a tuple (f, args, kwargs); segments[1..]:
  // out-of-band buffers. f may also be bytes holding the pickle of the function alone (what
  // the Python client sends for an unchanged __main__ function); loaded functions of that
  // kind are kept and copied per call. Reply value: [pickle of f(*args, **kwargs), buffers...].
  TaskOutcome apply(std::span<const SharedBytes> segments);

  void set_engine_id(int engine_id);

  // Raises KeyboardInterrupt in the user code running now: sends SIGINT to the Python thread
  // (other threads of the process must block SIGINT). Thread-safe, no GIL needed. If nothing
  // runs, the next call clears it before user code.
  void interrupt();

  // Releases the Python buffers of sent results (see on_buffers_to_release). Also done at
  // the start of every call.
  void release_sent_buffers();

 private:
  PythonRuntime();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace testudo::engine
