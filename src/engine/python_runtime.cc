// PythonRuntime: CPython embedded with pybind11. The request logic lives in Python
// (engine_support.py.inc, compiled once at startup as module _testudo_engine); this file
// starts and stops the interpreter, turns SharedBytes into Python buffers and back, and
// turns the helper's result tuples into TaskOutcome values.
//
// GIL: create() releases the GIL once the interpreter is ready, and each call takes it
// back for its duration, so threads started by user code run while the engine waits on
// the network.
#include "engine/python_runtime.h"
#include "pyglue/segment.h"

#include <Python.h>
#include <pybind11/embed.h>
#include <pybind11/pybind11.h>

#include <csignal>
#include <cstring>
#include <pthread.h>

#include <mutex>
#include <vector>
#include <exception>
#include <string>
#include <utility>

#include "base/log.h"

#ifndef TESTUDO_PYTHON_EXECUTABLE
#error "TESTUDO_PYTHON_EXECUTABLE must be defined by the build (see src/engine/CMakeLists.txt)"
#endif

namespace py = pybind11;

namespace {

// A received segment lent to Python through the buffer protocol: numpy arrays unpickled
// from it keep this object, hence the SharedBytes storage, alive by reference. No copy.
constexpr const char kEngineSupportSource[] =
#include "engine/engine_support.py.inc"
    ;

}  // namespace

namespace {
// Where live output goes (PythonRuntimeOptions::on_output); set once by create(), used on
// the Python thread only.
std::function<void(int, std::string)> g_output_sink;
}  // namespace

PYBIND11_EMBEDDED_MODULE(_testudo_native, m) {
  m.doc() = "testudo engine internals: zero-copy views of received message segments, live output";
  testudo::pyglue::define_segment(m);
  m.def("emit", [](int stream, py::bytes text) {
    if (g_output_sink) g_output_sink(stream, std::string(text));
  });
}

namespace testudo::engine {

namespace {

bool g_runtime_created = false;

TaskOutcome internal_failure(std::string ename, std::string evalue) {
  TaskOutcome outcome;
  outcome.ok = false;
  outcome.ename = std::move(ename);
  outcome.evalue = std::move(evalue);
  outcome.traceback = outcome.ename + ": " + outcome.evalue + "\n";
  return outcome;
}

// Buffers at least this big leave without a copy; smaller ones are copied (cheaper than
// the bookkeeping).
constexpr Py_ssize_t kZeroCopyBytes = 64 * 1024;

// Exported Python buffers whose SharedBytes are gone, waiting for the GIL to be released.
// Thread-safe.
struct DeferredReleases {
  std::mutex mutex;
  std::vector<Py_buffer*> views;  // guarded by mutex
  std::function<void()> notify;

  void push(Py_buffer* view) {
    {
      std::lock_guard lock(mutex);
      views.push_back(view);
    }
    if (notify) notify();
  }
  ~DeferredReleases() {
    // Only at exit, after the interpreter is gone: the exports cannot be released any more.
    for (Py_buffer* view : views) delete view;
  }

  // With the GIL held.
  void drain() {
    std::vector<Py_buffer*> done;
    {
      std::lock_guard lock(mutex);
      done.swap(views);
    }
    for (Py_buffer* view : done) {
      PyBuffer_Release(view);
      delete view;
    }
  }
};

// A SharedBytes over a Python bytes-like object: a view into it when large (the object stays
// alive until the bytes are sent), one memcpy when small.
SharedBytes share_buffer(py::handle object, const std::shared_ptr<DeferredReleases>& releases) {
  auto view = std::make_unique<Py_buffer>();
  if (PyObject_GetBuffer(object.ptr(), view.get(), PyBUF_SIMPLE) != 0) throw py::error_already_set();
  if (view->len < kZeroCopyBytes) {
    SharedBytes bytes = SharedBytes::allocate(static_cast<std::size_t>(view->len));
    if (view->len > 0) std::memcpy(bytes.data(), view->buf, static_cast<std::size_t>(view->len));
    PyBuffer_Release(view.get());
    return bytes;
  }
  Py_buffer* raw = view.release();
  return SharedBytes::adopt(raw->buf, static_cast<std::size_t>(raw->len), [releases, raw] { releases->push(raw); });
}

std::string bytes_to_string(py::handle object) {
  char* data = nullptr;
  Py_ssize_t size = 0;
  if (PyBytes_AsStringAndSize(object.ptr(), &data, &size) != 0) throw py::error_already_set();
  return std::string(data, static_cast<std::size_t>(size));
}

// (ok, ename, evalue, traceback, stdout, stderr, segments) -> TaskOutcome.
TaskOutcome to_outcome(const py::object& result, const std::shared_ptr<DeferredReleases>& releases) {
  py::tuple t = result.cast<py::tuple>();
  if (t.size() != 7) return internal_failure("InternalError", "engine helper returned a bad tuple");
  TaskOutcome outcome;
  outcome.ok = PyObject_IsTrue(t[0].ptr()) == 1;
  outcome.ename = bytes_to_string(t[1]);
  outcome.evalue = bytes_to_string(t[2]);
  outcome.traceback = bytes_to_string(t[3]);
  outcome.stdout_text = bytes_to_string(t[4]);
  outcome.stderr_text = bytes_to_string(t[5]);
  for (py::handle segment : t[6]) outcome.value_segments.push_back(share_buffer(segment, releases));
  return outcome;
}

py::list to_segment_list(std::span<const SharedBytes> segments) {
  py::list list;
  for (const SharedBytes& bytes : segments) list.append(py::cast(testudo::pyglue::Segment{bytes}));
  return list;
}

py::bytes to_bytes(std::string_view text) { return py::bytes(text.data(), text.size()); }

}  // namespace

struct PythonRuntime::Impl {
  // Owned references (raw, so this struct carries no hidden-visibility pybind11 types).
  PyObject* helper = nullptr;     // module _testudo_engine
  PyObject* namespace_ = nullptr;  // __main__.__dict__
  PyThreadState* saved_thread = nullptr;  // non-null while the GIL is released
  std::shared_ptr<DeferredReleases> releases = std::make_shared<DeferredReleases>();
  // The thread that runs Python (create()'s caller): interrupts are SIGINT sent to it.
  pthread_t python_thread{};

  // Holds the GIL for one call; every Python object of the call must die inside it.
  class Gil {
   public:
    explicit Gil(Impl& impl) : impl_(impl) {
      PyEval_RestoreThread(impl_.saved_thread);
      impl_.saved_thread = nullptr;
    }
    ~Gil() { impl_.saved_thread = PyEval_SaveThread(); }
    Gil(const Gil&) = delete;
    Gil& operator=(const Gil&) = delete;

   private:
    Impl& impl_;
  };

  // Calls helper.<function>(argument()) and converts its result. Never throws.
  template <typename MakeArgument>
  TaskOutcome call(const char* function, MakeArgument&& argument) {
    Gil gil(*this);
    try {
      releases->drain();
      // An interrupt meant for an earlier task must not hit this one.
      if (PyErr_CheckSignals() < 0) PyErr_Clear();
      py::object fn = py::reinterpret_borrow<py::object>(helper).attr(function);
      py::object result = fn(argument());
      return to_outcome(result, releases);
    } catch (py::error_already_set& e) {
      std::string ename = "InternalError";
      try {
        ename = py::str(e.type().attr("__name__")).cast<std::string>();
      } catch (const std::exception&) {
      }
      return internal_failure(std::move(ename), e.what());
    } catch (const std::exception& e) {
      return internal_failure("InternalError", e.what());
    }
  }
};

PythonRuntime::PythonRuntime() : impl_(std::make_unique<Impl>()) {}

StatusOr<std::unique_ptr<PythonRuntime>> PythonRuntime::create(const PythonRuntimeOptions& options) {
  // CPython (and numpy) cannot be reliably initialized a second time in one process, so a
  // runtime is created at most once, even after the first one is destroyed.
  if (g_runtime_created || Py_IsInitialized() != 0) {
    return failed_precondition("a Python runtime was already created in this process");
  }
  g_runtime_created = true;

  const std::string executable =
      options.executable.empty() ? std::string(TESTUDO_PYTHON_EXECUTABLE) : options.executable;

  PyConfig config;
  PyConfig_InitPythonConfig(&config);
  config.install_signal_handlers = 0;  // the engine's C++ side owns signals
  config.parse_argv = 0;
  PyStatus st = PyConfig_SetBytesString(&config, &config.program_name, executable.c_str());
  if (!PyStatus_Exception(st)) {
    st = PyConfig_SetBytesString(&config, &config.executable, executable.c_str());
  }
  if (PyStatus_Exception(st)) {
    std::string message = st.err_msg != nullptr ? st.err_msg : "cannot configure Python";
    PyConfig_Clear(&config);
    return internal_error("Python configuration: " + message);
  }
  try {
    // Clears `config` whether it succeeds or not.
    py::initialize_interpreter(&config, 0, nullptr, /*add_program_dir_to_path=*/false);
  } catch (const std::exception& e) {
    return internal_error(std::string("cannot start Python: ") + e.what());
  }

  std::unique_ptr<PythonRuntime> runtime(new PythonRuntime());
  Impl& impl = *runtime->impl_;
  std::string failure;
  try {
    py::module_::import("_testudo_native");  // registers Segment
    py::object module_type = py::module_::import("types").attr("ModuleType");
    py::module_ helper = module_type("_testudo_engine").cast<py::module_>();
    py::object builtins = py::module_::import("builtins");
    py::object code =
        builtins.attr("compile")(py::str(kEngineSupportSource), "<testudo-engine>", "exec");
    builtins.attr("exec")(code, helper.attr("__dict__"));
    py::module_::import("sys").attr("modules")["_testudo_engine"] = helper;

    // Interrupts (PyErr_SetInterruptEx) become KeyboardInterrupt in user code. Set here, on the
    // main thread; the engine's own signal handling is asio's (SIGTERM, SIGINT to the process).
    py::module_ signal = py::module_::import("signal");
    signal.attr("signal")(signal.attr("SIGINT"), signal.attr("default_int_handler"));
    py::object ns = py::module_::import("__main__").attr("__dict__");
    helper.attr("_init")(ns, options.engine_id, options.max_output_chars, options.max_result_bytes);
    impl.helper = helper.release().ptr();
    impl.namespace_ = ns.release().ptr();
  } catch (const std::exception& e) {
    failure = std::string("error: ") + e.what();
  }
  if (!failure.empty()) {
    // Leave the interpreter up: it cannot be started again in this process anyway.
    Py_CLEAR(impl.helper);
    Py_CLEAR(impl.namespace_);
    PyEval_SaveThread();
    return internal_error("cannot load the engine helper: " + failure);
  }
  impl.releases->notify = options.on_buffers_to_release;
  impl.python_thread = pthread_self();
  g_output_sink = options.on_output;
  impl.saved_thread = PyEval_SaveThread();
  LOG_INFO("engine") << "Python runtime started (" << executable << ")";
  return runtime;
}

PythonRuntime::~PythonRuntime() {
  if (!impl_ || impl_->helper == nullptr) return;  // failed create(): nothing to tear down
  PyEval_RestoreThread(impl_->saved_thread);
  impl_->saved_thread = nullptr;
  impl_->releases->drain();
  Py_CLEAR(impl_->helper);
  Py_CLEAR(impl_->namespace_);
  py::finalize_interpreter();
}

TaskOutcome PythonRuntime::execute(std::string_view code, bool display_result) {
  return impl_->call(display_result ? "execute_display" : "execute", [&] { return to_bytes(code); });
}

TaskOutcome PythonRuntime::push_pickled(std::span<const SharedBytes> segments) {
  return impl_->call("push_pickled", [&] { return to_segment_list(segments); });
}

TaskOutcome PythonRuntime::push_literals(
    const std::vector<std::pair<std::string, std::string>>& values) {
  return impl_->call("push_literals", [&] {
    py::list pairs;
    for (const auto& [name, literal] : values) pairs.append(py::make_tuple(to_bytes(name), to_bytes(literal)));
    return pairs;
  });
}

TaskOutcome PythonRuntime::pull_pickled(const std::vector<std::string>& names) {
  return impl_->call("pull_pickled", [&] {
    py::list list;
    for (const std::string& name : names) list.append(to_bytes(name));
    return list;
  });
}

TaskOutcome PythonRuntime::pull_repr(const std::vector<std::string>& names) {
  return impl_->call("pull_repr", [&] {
    py::list list;
    for (const std::string& name : names) list.append(to_bytes(name));
    return list;
  });
}

TaskOutcome PythonRuntime::apply(std::span<const SharedBytes> segments) {
  return impl_->call("apply", [&] { return to_segment_list(segments); });
}

void PythonRuntime::interrupt() {
  // A real SIGINT on the Python thread, as Ctrl-C would be: Python's handler raises
  // KeyboardInterrupt in running code and also cuts blocking calls short (time.sleep, I/O)
  // with EINTR. Setting the flag from another thread (PyErr_SetInterruptEx) does neither in
  // CPython 3.11 until that code happens to look.
  pthread_kill(impl_->python_thread, SIGINT);
}

void PythonRuntime::release_sent_buffers() {
  Impl::Gil gil(*impl_);
  impl_->releases->drain();
}

void PythonRuntime::set_engine_id(int engine_id) {
  Impl::Gil gil(*impl_);
  try {
    py::dict ns = py::reinterpret_borrow<py::dict>(impl_->namespace_);
    ns["__testudo_engine_id__"] = engine_id;
  } catch (const std::exception& e) {
    LOG_ERROR("engine") << "cannot set __testudo_engine_id__: " << e.what();
  }
}

}  // namespace testudo::engine
