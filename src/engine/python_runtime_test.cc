#include "engine/python_runtime.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

namespace testudo::engine {
namespace {

// CPython can be initialized once per process: every test shares this runtime, made by a
// global environment (which also exercises the destructor at the end).
PythonRuntime* g_runtime = nullptr;

class RuntimeEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    PythonRuntimeOptions options;
    options.engine_id = 7;
    auto runtime = PythonRuntime::create(options);
    ASSERT_TRUE(runtime.ok()) << runtime.status().to_string();
    runtime_ = std::move(runtime).value();
    g_runtime = runtime_.get();
  }
  void TearDown() override {
    g_runtime = nullptr;
    runtime_.reset();
  }

 private:
  std::unique_ptr<PythonRuntime> runtime_;
};

[[maybe_unused]] ::testing::Environment* const g_environment =
    ::testing::AddGlobalTestEnvironment(new RuntimeEnvironment);

PythonRuntime& rt() { return *g_runtime; }

std::string describe(const TaskOutcome& o) {
  return o.ename + ": " + o.evalue + "\n" + o.traceback + "stdout: " + o.stdout_text +
         "stderr: " + o.stderr_text;
}

// Runs code that must succeed.
void run(std::string_view code) {
  TaskOutcome o = rt().execute(code);
  ASSERT_TRUE(o.ok) << code << "\n" << describe(o);
}

// repr() of one variable of the namespace.
std::string repr_of(const std::string& name) {
  TaskOutcome o = rt().pull_repr({name});
  EXPECT_TRUE(o.ok) << describe(o);
  if (!o.ok || o.value_segments.size() != 1) return "<error>";
  return o.value_segments[0].to_string();
}

std::string temp_path(const std::string& name) {
  return (std::filesystem::path(::testing::TempDir()) /
          ("testudo_python_runtime_" + std::to_string(::getpid()) + "_" + name))
      .string();
}

void write_file(const std::string& path, const SharedBytes& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good());
}

SharedBytes read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return SharedBytes::copy_of(text);
}

// Unpickles a pulled value (no out-of-band buffers) in Python as `var`, via a file.
void load_in_python(const TaskOutcome& pulled, const std::string& var) {
  ASSERT_TRUE(pulled.ok) << describe(pulled);
  ASSERT_EQ(pulled.value_segments.size(), 1u);
  const std::string path = temp_path(var + ".pkl");
  write_file(path, pulled.value_segments[0]);
  run("import pickle\nwith open(r'" + path + "', 'rb') as fh:\n    " + var + " = pickle.load(fh)\n");
  std::filesystem::remove(path);
}

TEST(PythonRuntimeTest, ExecuteThenPullRepr) {
  run("alpha = 3\nbeta = 'text'\ngamma = [alpha, beta, None]\n");
  TaskOutcome o = rt().pull_repr({"alpha", "beta", "gamma"});
  ASSERT_TRUE(o.ok) << describe(o);
  ASSERT_EQ(o.value_segments.size(), 3u);
  EXPECT_EQ(o.value_segments[0].to_string(), "3");
  EXPECT_EQ(o.value_segments[1].to_string(), "'text'");
  EXPECT_EQ(o.value_segments[2].to_string(), "[3, 'text', None]");
  EXPECT_TRUE(o.stdout_text.empty());
}

TEST(PythonRuntimeTest, ReferenceExample) {
  TaskOutcome pushed = rt().push_literals({{"a", "5"}, {"b", "10"}});
  ASSERT_TRUE(pushed.ok) << describe(pushed);
  run("c = a + b");
  EXPECT_EQ(repr_of("c"), "15");
}

// The execute reply's one segment, parsed (discarded JSON if it is not one valid document).
nlohmann::json execute_reply(const TaskOutcome& o) {
  EXPECT_TRUE(o.ok) << describe(o);
  EXPECT_EQ(o.value_segments.size(), 1u);
  if (o.value_segments.size() != 1) return nlohmann::json::value_t::discarded;
  return nlohmann::json::parse(o.value_segments[0].to_string(), nullptr, /*allow_exceptions=*/false);
}

TEST(PythonRuntimeTest, TrailingExpressionIsNotDisplayed) {
  TaskOutcome o = rt().execute("1 + 1");
  EXPECT_EQ(o.stdout_text, "");
  nlohmann::json reply = execute_reply(o);
  ASSERT_TRUE(reply.is_object()) << reply;
  EXPECT_TRUE(reply.contains("execution_count"));
  EXPECT_FALSE(reply.contains("data"));
}

TEST(PythonRuntimeTest, DisplayedResultIsIPythonsExecuteResult) {
  const int before = execute_reply(rt().execute("pass")).value("execution_count", -1);
  ASSERT_GE(before, 0);
  nlohmann::json shown = execute_reply(rt().execute("shown = list(range(3))\nshown", /*display_result=*/true));
  EXPECT_EQ(shown["execution_count"], before + 1);
  EXPECT_EQ(shown["data"]["text/plain"], "[0, 1, 2]");
  EXPECT_TRUE(shown["metadata"].is_object());
  // None is not displayed, but counts; a silent execute reports the last count.
  nlohmann::json none = execute_reply(rt().execute("None", /*display_result=*/true));
  EXPECT_EQ(none["execution_count"], before + 2);
  EXPECT_FALSE(none.contains("data"));
  EXPECT_EQ(execute_reply(rt().execute("pass"))["execution_count"], before + 2);
  // A failure counts too, as in IPython.
  EXPECT_FALSE(rt().execute("1/0", /*display_result=*/true).ok);
  EXPECT_EQ(execute_reply(rt().execute("pass"))["execution_count"], before + 3);
}

TEST(PythonRuntimeTest, DisplayedResultCarriesRichAndBinaryTypes) {
  run("class Rich:\n"
      "    def __repr__(self): return 'Rich()'\n"
      "    def _repr_html_(self): return '<b>rich</b>'\n"
      "    def _repr_png_(self): return b'\\x89PNG-ish'\n"
      "    def _repr_json_(self): return {'unjsonable': object()}\n");
  nlohmann::json reply = execute_reply(rt().execute("Rich()", /*display_result=*/true));
  const nlohmann::json& data = reply["data"];
  EXPECT_EQ(data["text/plain"], "Rich()");
  EXPECT_EQ(data["text/html"], "<b>rich</b>");
  EXPECT_EQ(data["image/png"], "iVBORy1pc2g=");  // base64 of b'\x89PNG-ish'
  EXPECT_FALSE(data.contains("application/json"));  // not JSON: left out, the rest still shown
  // Text that has no UTF-8 form (a lone surrogate) still makes valid JSON.
  run("class OddRepr:\n    def __repr__(self): return 'odd \\ud800 é'\n");
  nlohmann::json odd = execute_reply(rt().execute("OddRepr()", /*display_result=*/true));
  EXPECT_EQ(odd["data"]["text/plain"], "odd ? \u00e9") << odd;
}

TEST(PythonRuntimeTest, OutputIsCapturedPerRequest) {
  TaskOutcome first = rt().execute("import sys\nprint('hello')\nprint('oops', file=sys.stderr)\n");
  ASSERT_TRUE(first.ok) << describe(first);
  EXPECT_EQ(first.stdout_text, "hello\n");
  EXPECT_EQ(first.stderr_text, "oops\n");

  TaskOutcome second = rt().execute("quiet = 1");
  ASSERT_TRUE(second.ok) << describe(second);
  EXPECT_EQ(second.stdout_text, "");
  EXPECT_EQ(second.stderr_text, "");

  // What an erroring request printed before the error is kept.
  TaskOutcome failing = rt().execute("print('before')\nraise RuntimeError('boom')\n");
  EXPECT_FALSE(failing.ok);
  EXPECT_EQ(failing.stdout_text, "before\n");
  EXPECT_EQ(failing.ename, "RuntimeError");
  EXPECT_EQ(failing.evalue, "boom");

  TaskOutcome third = rt().execute("print('only me')");
  EXPECT_EQ(third.stdout_text, "only me\n");
  EXPECT_EQ(third.stderr_text, "");
}

TEST(PythonRuntimeTest, NonUtf8OutputIsEscapedNotFatal) {
  TaskOutcome o = rt().execute("print('\\ud800')");
  ASSERT_TRUE(o.ok) << describe(o);
  EXPECT_EQ(o.stdout_text, "\\ud800\n");
}

TEST(PythonRuntimeTest, ZeroDivisionIsARemoteError) {
  TaskOutcome o = rt().execute("ok_line = 1\nbad = 1/0\n");
  EXPECT_FALSE(o.ok);
  EXPECT_EQ(o.ename, "ZeroDivisionError");
  EXPECT_EQ(o.evalue, "division by zero");
  // IPython's header line, as an IPython kernel's tracebacks start.
  EXPECT_EQ(o.traceback.rfind("---", 0), 0u) << o.traceback;
  EXPECT_NE(o.traceback.find("ZeroDivisionError                         Traceback (most recent call last)\n"),
            std::string::npos)
      << o.traceback;
  EXPECT_NE(o.traceback.find("File \"<testudo-execute>\", line 2, in <module>"), std::string::npos)
      << o.traceback;
  EXPECT_NE(o.traceback.find("bad = 1/0"), std::string::npos) << o.traceback;
  EXPECT_NE(o.traceback.find("ZeroDivisionError: division by zero"), std::string::npos);
  // The engine's own frames are not shown.
  EXPECT_EQ(o.traceback.find("<testudo-engine>"), std::string::npos) << o.traceback;
  EXPECT_EQ(repr_of("ok_line"), "1");  // statements before the error ran
}

TEST(PythonRuntimeTest, TracebackShowsNoWrongSourceForEarlierCode) {
  run("\n\ndef fails_later():\n    return 1/0\n");
  TaskOutcome o = rt().execute("pad1 = 0\npad2 = 0\npad3 = 0\nfails_later()\n");
  EXPECT_FALSE(o.ok);
  EXPECT_EQ(o.ename, "ZeroDivisionError");
  EXPECT_NE(o.traceback.find("line 4, in fails_later"), std::string::npos) << o.traceback;
  // Line 4 of *this* request is "fails_later()": it must not be shown as the function's line.
  EXPECT_EQ(o.traceback.find("fails_later()"), std::string::npos) << o.traceback;
}

TEST(PythonRuntimeTest, SyntaxErrorIsReported) {
  TaskOutcome o = rt().execute("x = (1 +\n");
  EXPECT_FALSE(o.ok);
  EXPECT_EQ(o.ename, "SyntaxError");
  EXPECT_NE(o.traceback.find("<testudo-execute>"), std::string::npos) << o.traceback;
  EXPECT_EQ(o.traceback.find("<testudo-engine>"), std::string::npos) << o.traceback;
}

TEST(PythonRuntimeTest, InvalidUtf8SourceIsAnError) {
  TaskOutcome o = rt().execute("s = '\xff\xfe'");
  EXPECT_FALSE(o.ok);
  EXPECT_EQ(o.ename, "SyntaxError") << describe(o);
}

TEST(PythonRuntimeTest, SystemExitAndKeyboardInterruptAreNotFatal) {
  TaskOutcome exit = rt().execute("import sys\nsys.exit(3)\n");
  EXPECT_FALSE(exit.ok);
  EXPECT_EQ(exit.ename, "SystemExit");
  EXPECT_EQ(exit.evalue, "3");

  TaskOutcome interrupt = rt().execute("raise KeyboardInterrupt('stop')");
  EXPECT_FALSE(interrupt.ok);
  EXPECT_EQ(interrupt.ename, "KeyboardInterrupt");

  TaskOutcome custom = rt().execute("class Odd(BaseException):\n    pass\nraise Odd('x')\n");
  EXPECT_FALSE(custom.ok);
  EXPECT_EQ(custom.ename, "Odd");

  run("still_alive = True");
  EXPECT_EQ(repr_of("still_alive"), "True");
}

TEST(PythonRuntimeTest, MissingNameIsNameError) {
  TaskOutcome r = rt().pull_repr({"no_such_variable"});
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.ename, "NameError");
  EXPECT_EQ(r.evalue, "name 'no_such_variable' is not defined");
  EXPECT_TRUE(r.value_segments.empty());

  TaskOutcome p = rt().pull_pickled({"no_such_variable"});
  EXPECT_FALSE(p.ok);
  EXPECT_EQ(p.ename, "NameError");
  EXPECT_EQ(p.evalue, "name 'no_such_variable' is not defined");
}

TEST(PythonRuntimeTest, PushLiteralsAcceptsLiterals) {
  TaskOutcome o = rt().push_literals(
      {{"lit_list", "[1, 'two', {'k': (3.5, None)}]"}, {"lit_neg", "-2"}, {"lit_set", "{1}"}});
  ASSERT_TRUE(o.ok) << describe(o);
  EXPECT_EQ(repr_of("lit_list"), "[1, 'two', {'k': (3.5, None)}]");
  EXPECT_EQ(repr_of("lit_neg"), "-2");
  EXPECT_EQ(repr_of("lit_set"), "{1}");
}

TEST(PythonRuntimeTest, PushLiteralsRejectsCodeAndBadNames) {
  run("import os\nos.environ.pop('TESTUDO_SHOULD_NOT_EXIST', None)\n");
  TaskOutcome code = rt().push_literals({{"evil", "__import__('os')"}});
  EXPECT_FALSE(code.ok);
  EXPECT_EQ(code.ename, "ValueError") << describe(code);
  EXPECT_EQ(code.evalue.rfind("value of 'evil' is not a Python literal", 0), 0u) << code.evalue;
  EXPECT_FALSE(rt().pull_repr({"evil"}).ok);

  TaskOutcome bad_name = rt().push_literals({{"not a name", "1"}});
  EXPECT_FALSE(bad_name.ok);
  EXPECT_EQ(bad_name.ename, "ValueError");

  TaskOutcome keyword = rt().push_literals({{"class", "1"}});
  EXPECT_FALSE(keyword.ok);
  EXPECT_EQ(keyword.ename, "ValueError");

  // All or nothing.
  TaskOutcome mixed = rt().push_literals({{"good_first", "1"}, {"bad second", "2"}});
  EXPECT_FALSE(mixed.ok);
  EXPECT_FALSE(rt().pull_repr({"good_first"}).ok);

  TaskOutcome syntax = rt().push_literals({{"broken", "[1,"}});
  EXPECT_FALSE(syntax.ok);
  EXPECT_EQ(syntax.ename, "SyntaxError");
}

TEST(PythonRuntimeTest, PullPickledSeveralNamesGivesAList) {
  run("pa = 5\npb = 'x'\n");
  load_in_python(rt().pull_pickled({"pa", "pb"}), "pulled_list");
  EXPECT_EQ(repr_of("pulled_list"), "[5, 'x']");
  load_in_python(rt().pull_pickled({"pa"}), "pulled_one");
  EXPECT_EQ(repr_of("pulled_one"), "5");
}

TEST(PythonRuntimeTest, PickledRoundTripWithOutOfBandBuffers) {
  run("import numpy as np\nx = np.arange(1_000_000, dtype='float64')\n");
  TaskOutcome pulled_x = rt().pull_pickled({"x"});
  ASSERT_TRUE(pulled_x.ok) << describe(pulled_x);
  ASSERT_GE(pulled_x.value_segments.size(), 2u);
  EXPECT_EQ(pulled_x.value_segments[1].size(), 8'000'000u);
  EXPECT_LT(pulled_x.value_segments[0].size(), 1000u);  // the data is not in-band

  run("to_push = {'y': x, 'label': 'arange'}");
  TaskOutcome pulled = rt().pull_pickled({"to_push"});
  ASSERT_TRUE(pulled.ok) << describe(pulled);
  ASSERT_EQ(pulled.value_segments.size(), 2u);
  run("del x, to_push");

  TaskOutcome pushed = rt().push_pickled(pulled.value_segments);
  ASSERT_TRUE(pushed.ok) << describe(pushed);
  run("y_sum = float(y.sum())\ny_len = len(y)\n"
      "import _testudo_native\n"
      "base = y\n"
      "while getattr(base, 'base', None) is not None and not isinstance(base, _testudo_native.Segment):\n"
      "    base = base.base\n"
      "if isinstance(base, memoryview):\n"
      "    base = base.obj\n"
      "zero_copy = isinstance(base, _testudo_native.Segment)\n"
      "writable = y.flags.writeable\n");
  EXPECT_EQ(repr_of("y_sum"), "499999500000.0");
  EXPECT_EQ(repr_of("y_len"), "1000000");
  EXPECT_EQ(repr_of("label"), "'arange'");
  EXPECT_EQ(repr_of("zero_copy"), "True");
  EXPECT_EQ(repr_of("writable"), "True");

  // The array reads the segment's memory itself.
  auto* first_double = reinterpret_cast<double*>(pulled.value_segments[1].data() + 8);
  *first_double = 1e6;  // y[1] was 1.0
  run("y1 = float(y[1])\ndel y, base\n");
  EXPECT_EQ(repr_of("y1"), "1000000.0");
}

TEST(PythonRuntimeTest, PushPickledRejectsGarbageAndNonDicts) {
  std::vector<SharedBytes> garbage{SharedBytes::copy_of(std::string_view("not a pickle"))};
  TaskOutcome o = rt().push_pickled(garbage);
  EXPECT_FALSE(o.ok);
  EXPECT_FALSE(o.ename.empty());

  EXPECT_FALSE(rt().push_pickled({}).ok);

  run("import pickle\nnot_a_dict = [1, 2]\n");
  TaskOutcome list = rt().pull_pickled({"not_a_dict"});
  ASSERT_TRUE(list.ok);
  TaskOutcome pushed = rt().push_pickled(list.value_segments);
  EXPECT_FALSE(pushed.ok);
  EXPECT_EQ(pushed.ename, "TypeError");
}

TEST(PythonRuntimeTest, ApplyCallsAPickledFunction) {
  const std::string payload_path = temp_path("apply_payload.pkl");
  const std::string result_path = temp_path("apply_result.pkl");
  run("import cloudpickle\nimport numpy as np\n"
      "def make_payload(path, f, args, kwargs):\n"
      "    with open(path, 'wb') as fh:\n"
      "        fh.write(cloudpickle.dumps((f, args, kwargs), protocol=5))\n"
      "def talkative(x, y=1):\n"
      "    print('computing')\n"
      "    return x * y\n"
      "make_payload(r'" + payload_path + "', talkative, (6,), {'y': 7})\n");

  std::vector<SharedBytes> request{read_file(payload_path)};
  TaskOutcome o = rt().apply(request);
  ASSERT_TRUE(o.ok) << describe(o);
  EXPECT_EQ(o.stdout_text, "computing\n");
  ASSERT_EQ(o.value_segments.size(), 1u);
  write_file(result_path, o.value_segments[0]);
  run("import pickle\nwith open(r'" + result_path + "', 'rb') as fh:\n"
      "    applied = pickle.load(fh)\n"
      "applied_ok = applied == 42\n");
  EXPECT_EQ(repr_of("applied_ok"), "True");

  // A raising function: the user's frame is in the traceback, the engine's are not.
  run("def broken(v):\n    return {}[v]\n"
      "make_payload(r'" + payload_path + "', broken, ('key',), {})\n");
  std::vector<SharedBytes> failing{read_file(payload_path)};
  TaskOutcome error = rt().apply(failing);
  EXPECT_FALSE(error.ok);
  EXPECT_EQ(error.ename, "KeyError");
  EXPECT_EQ(error.evalue, "'key'");
  EXPECT_NE(error.traceback.find("in broken"), std::string::npos) << error.traceback;
  EXPECT_EQ(error.traceback.find("<testudo-engine>"), std::string::npos) << error.traceback;

  // A lambda pickled by value, returning an array: out-of-band buffers in the reply.
  run("make_payload(r'" + payload_path + "', lambda n: np.ones(n), (1000,), {})\n");
  std::vector<SharedBytes> array_request{read_file(payload_path)};
  TaskOutcome array = rt().apply(array_request);
  ASSERT_TRUE(array.ok) << describe(array);
  ASSERT_EQ(array.value_segments.size(), 2u);
  EXPECT_EQ(array.value_segments[1].size(), 8000u);

  std::vector<SharedBytes> garbage{SharedBytes::copy_of(std::string_view("\x80\x05junk"))};
  EXPECT_FALSE(rt().apply(garbage).ok);

  std::filesystem::remove(payload_path);
  std::filesystem::remove(result_path);
}

// The Python client may send f as its own pickle (bytes) inside the call tuple; the engine
// keeps such a function only where reusing it cannot differ from loading it per call.
TEST(PythonRuntimeTest, ApplyAcceptsAFunctionPickledApart) {
  const std::string payload_path = temp_path("apply_apart.pkl");
  const std::string result_path = temp_path("apply_apart_result.pkl");
  run("import cloudpickle, pickle\n"
      "def payload_apart(path, f, args):\n"
      "    with open(path, 'wb') as fh:\n"
      "        fh.write(pickle.dumps((cloudpickle.dumps(f, protocol=5), args, {}), protocol=5))\n"
      "def read_result(path):\n"
      "    with open(path, 'rb') as fh:\n"
      "        return pickle.load(fh)\n"
      "def plus_offset(x, y=1):\n"
      "    return x + y + offset\n"
      "def appends(acc=[]):\n"
      "    acc.append(1)\n"
      "    return len(acc)\n");
  auto call = [&](const std::string& name) {
    TaskOutcome o = rt().apply(std::vector<SharedBytes>{read_file(payload_path)});
    EXPECT_TRUE(o.ok) << describe(o);
    if (!o.ok || o.value_segments.size() != 1) return;
    write_file(result_path, o.value_segments[0]);
    run(name + " = read_result(r'" + result_path + "')\n");
  };

  // The same bytes twice: the function sees this engine's namespace as it is at each call.
  run("payload_apart(r'" + payload_path + "', plus_offset, (1,))\noffset = 10\n");
  call("first");
  run("offset = 20\n");
  call("second");
  EXPECT_EQ(repr_of("first"), "12");
  EXPECT_EQ(repr_of("second"), "22");

  // A mutable default is not shared between calls: each call loads its own copy.
  run("payload_apart(r'" + payload_path + "', appends, ())\n");
  call("once");
  call("twice");
  EXPECT_EQ(repr_of("once"), "1");
  EXPECT_EQ(repr_of("twice"), "1");

  // Bytes that are no pickle are the request's error, not the engine's.
  run("with open(r'" + payload_path + "', 'wb') as fh:\n"
      "    fh.write(pickle.dumps((b'not a pickle', (), {}), protocol=5))\n");
  TaskOutcome bad = rt().apply(std::vector<SharedBytes>{read_file(payload_path)});
  EXPECT_FALSE(bad.ok);
  EXPECT_EQ(bad.ename, "UnpicklingError") << describe(bad);

  std::filesystem::remove(payload_path);
  std::filesystem::remove(result_path);
}

TEST(PythonRuntimeTest, InterpreterIdentity) {
  run("import sys\nexe = sys.executable\nin_main = __name__ == '__main__'\n");
  EXPECT_EQ(repr_of("exe"), "'/usr/bin/python3'");
  EXPECT_EQ(repr_of("in_main"), "True");
}

TEST(PythonRuntimeTest, EngineIdIsInTheNamespace) {
  EXPECT_EQ(repr_of("__testudo_engine_id__"), "7");
  rt().set_engine_id(3);
  EXPECT_EQ(repr_of("__testudo_engine_id__"), "3");
  rt().set_engine_id(7);
}

TEST(PythonRuntimeTest, UserThreadsRunBetweenRequests) {
  run("import threading, time\n"
      "started = threading.Event()\n"
      "done = threading.Event()\n"
      "def worker():\n"
      "    started.set()\n"
      "    time.sleep(0.05)\n"
      "    done.set()\n"
      "threading.Thread(target=worker, daemon=True).start()\n"
      "started.wait(5)\n");
  std::this_thread::sleep_for(std::chrono::milliseconds(500));  // no Python running here
  run("finished = done.is_set()");
  EXPECT_EQ(repr_of("finished"), "True");
}

TEST(PythonRuntimeTest, OnlyOneRuntimePerProcess) {
  auto second = PythonRuntime::create({});
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), StatusCode::kFailedPrecondition);
  run("after_second_create = 1");
}

}  // namespace
}  // namespace testudo::engine

namespace testudo::engine {
namespace {

// interrupt() from another thread stops user code stuck in a loop with KeyboardInterrupt;
// the runtime goes on, and a stale interrupt does not hit the next request.
TEST(PythonRuntimeInterruptTest, InterruptStopsALoopAndStaysInItsRequest) {
  std::thread interrupter([] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    rt().interrupt();
  });
  TaskOutcome o = rt().execute("spins = 0\nwhile True:\n    spins += 1\n");
  interrupter.join();
  EXPECT_FALSE(o.ok);
  EXPECT_EQ(o.ename, "KeyboardInterrupt");
  rt().interrupt();  // nothing runs: must not leak into the next request
  TaskOutcome next = rt().execute("after = spins > 0");
  EXPECT_TRUE(next.ok) << next.ename << ": " << next.evalue;
}

}  // namespace
}  // namespace testudo::engine

namespace testudo::engine {
namespace {

// Blocking calls are cut short too (the interrupt is a real SIGINT on the Python thread).
TEST(PythonRuntimeInterruptTest, InterruptCutsASleepShort) {
  std::thread interrupter([] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    rt().interrupt();
  });
  auto start = std::chrono::steady_clock::now();
  TaskOutcome o = rt().execute("import time\ntime.sleep(30)\n");
  interrupter.join();
  EXPECT_FALSE(o.ok);
  EXPECT_EQ(o.ename, "KeyboardInterrupt");
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
}

}  // namespace
}  // namespace testudo::engine
