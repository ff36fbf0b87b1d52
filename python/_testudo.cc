// testudo._testudo: the Python binding of the C++ client (include/testudo/client.h).
// Deliberately thin: the protocol, TLS and authentication live in C++ only; the Python
// package (python/testudo/) adds ipyparallel's API on top.
//
// GIL rules that keep this deadlock-free: every call that can block (connect, control
// requests, waits, close) releases the GIL; the client's network thread takes it only to call
// a secret provider the user gave (python_secret: a password or token callable, at login and
// token renewal), which must therefore not wait on this client.
// Completions reach Python through a queue that a Python thread drains (next_completed).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cctype>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <optional>

#include "auth/passphrase.h"
#include "base/log.h"
#include "client/reply.h"
#include "pyglue/segment.h"
#include "testudo/client.h"
#include "testudo/outcome.h"
#include "wire/body.h"
#include "wire/reply.h"

namespace py = pybind11;

namespace testudo::python {
namespace {

std::chrono::milliseconds to_ms(double seconds) {
  if (seconds < 0) seconds = 0;
  if (seconds > 1e9) seconds = 1e9;
  return std::chrono::milliseconds(static_cast<long long>(seconds * 1000));
}

[[noreturn]] void raise_python(PyObject* type, const std::string& message) {
  PyErr_SetString(type, message.c_str());
  throw py::error_already_set();
}

// Raises the Python exception that matches `st`: for an error that reports a request's
// outcome, the one testudo.error.outcome_error() documents for it (the table lives there,
// one for task results and for calls); for the client's own errors (connecting, local
// timeouts), one by code.
[[noreturn]] void raise_status(const Status& st) {
  if (std::optional<Outcome> outcome = st.outcome()) {
    py::object exc = py::module_::import("testudo.error").attr("outcome_error")(*outcome, st.message());
    PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
    throw py::error_already_set();
  }
  switch (st.code()) {
    case StatusCode::kPermissionDenied: raise_python(PyExc_PermissionError, st.message());
    case StatusCode::kUnauthenticated: raise_python(PyExc_PermissionError, st.message());
    case StatusCode::kNotFound: raise_python(PyExc_FileNotFoundError, st.message());
    case StatusCode::kDeadlineExceeded: raise_python(PyExc_TimeoutError, st.message());
    case StatusCode::kUnavailable: raise_python(PyExc_ConnectionError, st.message());
    case StatusCode::kInvalidArgument: raise_python(PyExc_ValueError, st.message());
    default: raise_python(PyExc_RuntimeError, st.to_string());
  }
}

// A secret the user's Python code supplies (a password, a token, a key passphrase): a str, or a
// callable returning one, which the client calls when a session needs it (possibly on its
// network thread, hence the GIL). Errors name the argument, never the secret. None: unset.
std::function<StatusOr<std::string>()> python_secret(const py::object& source, const std::string& argument) {
  if (source.is_none()) return {};
  if (py::isinstance<py::str>(source) || py::isinstance<py::bytes>(source)) {
    return [text = source.cast<std::string>()]() -> StatusOr<std::string> { return text; };
  }
  // The object is released under the GIL, whichever thread drops the last copy.
  std::shared_ptr<py::object> callable(new py::object(source), [](py::object* o) {
    if (!Py_IsInitialized()) return;  // the interpreter is gone: leak rather than crash
    py::gil_scoped_acquire gil;
    delete o;
  });
  return [callable, argument]() -> StatusOr<std::string> {
    if (!Py_IsInitialized()) return unavailable("the Python interpreter is shutting down");
    py::gil_scoped_acquire gil;
    try {
      py::object value = (*callable)();
      if (py::isinstance<py::str>(value) || py::isinstance<py::bytes>(value)) return value.cast<std::string>();
      return invalid_argument(argument + " returned " + std::string(py::str(py::type::of(value).attr("__name__"))) +
                              ", not str");
    } catch (py::error_already_set& e) {
      // The exception's type only: its text may hold what the callable was handling.
      const std::string type = e.type() ? std::string(py::str(e.type().attr("__name__"))) : "an exception";
      return failed_precondition(argument + " raised " + type);
    }
  };
}

struct OutputChunk {
  std::uint64_t request_id;
  EngineId engine;
  int stream;
  std::string text;
};

// Finished request ids and live output, for the Python thread that completes futures.
class CompletionQueue {
 public:
  void push(std::uint64_t id) {
    {
      std::lock_guard lock(mutex_);
      ids_.push_back(id);
    }
    ready_.notify_one();
  }
  void push_output(OutputChunk chunk) {
    {
      std::lock_guard lock(mutex_);
      // Bounded: a client that never looks keeps at most this much live output.
      if (output_bytes_ + chunk.text.size() > (64u << 20)) return;
      output_bytes_ += chunk.text.size();
      outputs_.push_back(std::move(chunk));
    }
    ready_.notify_one();
  }
  std::vector<OutputChunk> take_output() {
    std::lock_guard lock(mutex_);
    std::vector<OutputChunk> out(std::make_move_iterator(outputs_.begin()), std::make_move_iterator(outputs_.end()));
    outputs_.clear();
    output_bytes_ = 0;
    return out;
  }
  void close() {
    {
      std::lock_guard lock(mutex_);
      closed_ = true;
    }
    ready_.notify_all();
  }
  // Waits up to `timeout` for at least one id; returns all that are there.
  std::vector<std::uint64_t> take(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    ready_.wait_for(lock, timeout, [this] { return !ids_.empty() || !outputs_.empty() || closed_; });
    std::vector<std::uint64_t> out(ids_.begin(), ids_.end());
    ids_.clear();
    return out;
  }

 private:
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<std::uint64_t> ids_;  // guarded by mutex_
  std::deque<OutputChunk> outputs_;  // guarded by mutex_
  std::size_t output_bytes_ = 0;     // guarded by mutex_
  bool closed_ = false;            // guarded by mutex_
};

struct PyReply {
  EngineReply reply;
};

class PyResult {
 public:
  PyResult(AsyncResult result, std::shared_ptr<CompletionQueue> queue)
      : result_(std::move(result)), queue_(std::move(queue)) {}

  std::uint64_t request_id() const { return result_.request_id(); }
  // When the request was handed to the client (seconds since 1970): before it was sealed and
  // sent, so never after its engine started it.
  double submitted() const { return submitted_; }
  void set_submitted(double at) { submitted_ = at; }
  std::vector<EngineId> targets() const { return result_.targets(); }
  bool ready() const { return result_.ready(); }
  bool wait(double timeout) const {
    py::gil_scoped_release release;
    return result_.wait(to_ms(timeout));
  }
  // Reports this request's id to the client's completion queue once it is ready.
  void watch() {
    if (watched_) return;
    watched_ = true;
    auto queue = queue_;
    std::uint64_t id = result_.request_id();
    result_.on_ready([queue, id] { queue->push(id); });
  }
  std::vector<PyReply> replies() const {
    if (!result_.ready()) throw py::value_error("result not ready");
    auto replies = result_.get(std::chrono::milliseconds(0));
    if (!replies.ok()) raise_status(replies.status());
    std::vector<PyReply> out;
    out.reserve(replies->size());
    for (auto& r : *replies) out.push_back(PyReply{std::move(r)});
    return out;
  }
  // [(engine_id, task_id, ok, started, completed, stdout, stderr, [segment, ...]), ...] in target
  // order: what AsyncResult needs of each reply in one call, without a Reply object each
  // (errors are read from replies()).
  py::list outcome() const {
    if (!result_.ready()) throw py::value_error("result not ready");
    auto replies = result_.get(std::chrono::milliseconds(0));
    if (!replies.ok()) raise_status(replies.status());
    py::list out(replies->size());
    std::size_t i = 0;
    for (auto& r : *replies) {
      py::list value(r.value.size());
      std::size_t j = 0;
      for (auto& s : r.value) value[j++] = py::cast(pyglue::Segment{std::move(s)});
      out[i++] = py::make_tuple(r.engine_id, r.task_id, r.status.ok(), r.started_us / 1e6, r.completed_us / 1e6, r.stdout_text,
                                r.stderr_text, std::move(value));
    }
    return out;
  }
  std::vector<std::uint64_t> task_ids(double timeout) const {
    StatusOr<std::vector<std::uint64_t>> ids = not_found("");
    {
      py::gil_scoped_release release;
      ids = result_.task_ids(to_ms(timeout));
    }
    if (!ids.ok()) raise_status(ids.status());
    return *ids;
  }
  const AsyncResult& native() const { return result_; }

 private:
  AsyncResult result_;
  std::shared_ptr<CompletionQueue> queue_;
  bool watched_ = false;
  double submitted_ = 0;
};

class PyClient {
 public:
  // Runs `call(client)` without the GIL (it waits on the network) and returns its value, or
  // raises its error as the matching Python exception.
  template <typename Call>
  auto blocking(Call call) {
    Client& c = client();
    std::optional<decltype(call(c))> result;
    {
      py::gil_scoped_release release;
      result.emplace(call(c));
    }
    if (!result->ok()) raise_status(result->status());
    return std::move(*result).value();
  }

  PyClient(const std::string& connection_file, const std::string& profile, double timeout,
           const std::string& identity_dir, const std::string& key_passphrase_from, const std::string& dial_host,
           std::uint16_t dial_port, const py::object& key_passphrase, const std::string& login_method,
           const std::string& username, const py::object& secret, const std::string& secret_from,
           const std::string& service, const std::string& e2e, const std::vector<std::string>& engine_keys,
           const std::string& engine_cafile, std::uint64_t bulk_from_bytes)
      : queue_(std::make_shared<CompletionQueue>()) {
    ClientOptions o;
    // "auto" (seal when this client can), "on" (required) or "off".
    if (e2e == "on") {
      o.e2e = ClientOptions::E2e::kRequired;
    } else if (e2e == "off") {
      o.e2e = ClientOptions::E2e::kOff;
    } else if (e2e != "auto") {
      throw py::value_error("e2e: 'auto', 'on' or 'off', got '" + e2e + "'");
    }
    o.bulk_from_bytes = bulk_from_bytes;
    o.engine_keys = engine_keys;
    o.engine_cafile = engine_cafile;
    o.key_passphrase = python_secret(key_passphrase, "key_passphrase_from");
    o.login.method = login_method;
    o.login.username = username;
    o.login.secret = python_secret(secret, login_method == "token" ? "token_provider" : "password");
    if (!secret_from.empty()) {
      // token_from='file:PATH' etc.: read each time a session needs it, as the CLI's --token-from.
      auto source = auth::parse_passphrase_source(secret_from);
      if (!source.ok()) raise_status(source.status());
      o.login.secret = [source = *source]() { return auth::read_passphrase(source, "login token", false, 16 * 1024); };
    }
    o.login.service = service;
    o.dial_host = dial_host;
    o.dial_port = dial_port;
    o.connection_file = connection_file;
    o.profile = profile;
    o.identity_dir = identity_dir;
    o.key_passphrase_from = key_passphrase_from;
    o.connect_timeout = to_ms(timeout);
    o.request_timeout = to_ms(std::max(timeout, 1.0));
    StatusOr<std::unique_ptr<Client>> c = not_found("");
    {
      py::gil_scoped_release release;
      c = Client::connect(o);
    }
    if (!c.ok()) raise_status(c.status());
    client_ = std::move(c).value();
    auto queue = queue_;
    client_->set_output_handler([queue](std::uint64_t request_id, EngineId engine, int stream, std::string_view text) {
      queue->push_output(OutputChunk{request_id, engine, stream, std::string(text)});
    });
  }
  ~PyClient() { close(); }

  void close() {
    if (!client_) return;
    std::unique_ptr<Client> closing = std::move(client_);
    {
      // Joins the network thread, which never takes the GIL: safe to wait without it.
      py::gil_scoped_release release;
      closing.reset();
    }
    queue_->close();
    borrowed_.clear();  // every pending request has failed by now: nothing reads these buffers
  }

  Client& client() {
    if (!client_) raise_python(PyExc_ConnectionError, "client is closed");
    return *client_;
  }

  bool connected() const { return client_ && client_->connected(); }
  std::uint32_t client_id() { return client().client_id(); }

  std::vector<EngineId> engine_ids() {
    return blocking([](Client& c) { return c.engine_ids(); });
  }

  std::string cluster_status() {
    return blocking([](Client& c) { return c.cluster_status(); });
  }

  void shutdown_cluster() {
    Status st;
    Client& c = client();
    {
      py::gil_scoped_release release;
      st = c.shutdown_cluster();
    }
    if (!st.ok()) raise_status(st);
  }

  PyResult execute(const std::vector<EngineId>& targets, const std::string& code, bool display_result) {
    return wrap(without_gil([&](Client& c) { return c.execute(targets, code, display_result); }));
  }
  PyResult push(const std::vector<EngineId>& targets, const py::list& segments) {
    py::list keep;
    auto bytes = borrow(segments, keep);
    return wrap(without_gil([&](Client& c) { return c.push_pickled(targets, std::move(bytes)); }), keep);
  }
  PyResult pull(const std::vector<EngineId>& targets, const std::vector<std::string>& names) {
    return wrap(without_gil([&](Client& c) { return c.pull_pickled(targets, names); }));
  }
  PyResult apply(const std::vector<EngineId>& targets, const py::list& segments) {
    py::list keep;
    auto bytes = borrow(segments, keep);
    return wrap(without_gil([&](Client& c) { return c.apply(targets, std::move(bytes)); }), keep);
  }

  PyResult apply_balanced(const std::vector<EngineId>& allowed, const py::list& segments, std::uint32_t retries,
                          double timeout, const std::vector<std::uint64_t>& after,
                          const std::vector<std::uint64_t>& follow, const std::tuple<bool, bool, bool>& after_rule,
                          const std::tuple<bool, bool, bool>& follow_rule) {
    py::list keep;
    auto bytes = borrow(segments, keep);
    TaskOptions options;
    options.retries = retries;
    if (timeout > 0) options.timeout = to_ms(timeout);
    options.after = after;
    options.follow = follow;
    // (all, success, failure), as ipyparallel's Dependency; one counting no outcome is refused.
    for (auto [rule, given] :
         {std::pair{&options.after_rule, &after_rule}, std::pair{&options.follow_rule, &follow_rule}}) {
      auto [all, success, failure] = *given;
      if (!success && !failure) throw py::value_error("a dependency must count successes, failures or both");
      *rule = {.all = all, .success = success, .failure = failure};
    }
    return wrap(without_gil([&](Client& c) { return c.apply_balanced(allowed, std::move(bytes), options); }), keep);
  }

  std::size_t abort(const std::vector<std::uint64_t>& task_ids) {
    return blocking([&](Client& c) { return c.abort(task_ids); });
  }
  std::size_t interrupt(const std::vector<EngineId>& targets) {
    return blocking([&](Client& c) { return c.interrupt(targets); });
  }
  std::size_t shutdown_engines(const std::vector<EngineId>& targets) {
    return blocking([&](Client& c) { return c.shutdown_engines(targets); });
  }
  std::string engines_json() {
    return blocking([](Client& c) { return c.engines_json(); });
  }
  std::vector<std::string> seal_violations() { return client().seal_violations(); }
  // (on, why it is off: empty when on)
  std::pair<bool, std::string> sealing() {
    const Client::Sealing s = client().sealing();
    return {s.on, s.why_off};
  }

  PyResult get_result(const std::vector<std::uint64_t>& task_ids) {
    return wrap(without_gil([&](Client& c) { return c.get_result(task_ids); }));
  }
  std::string result_status(const std::vector<std::uint64_t>& task_ids) {
    return blocking([&](Client& c) { return c.result_status(task_ids); });
  }
  std::string db_query(const std::string& filter) {
    return blocking([&](Client& c) { return c.db_query(filter); });
  }
  std::size_t purge_results(const std::vector<std::uint64_t>& task_ids) {
    return blocking([&](Client& c) { return c.purge_results(task_ids); });
  }

  std::string queue_status() {
    return blocking([](Client& c) { return c.queue_status(); });
  }

  std::vector<std::uint64_t> next_completed(double timeout) {
    py::gil_scoped_release release;
    return queue_->take(to_ms(timeout));
  }

  // [(request_id, engine_id, 'stdout'|'stderr', text), ...] received since the last call.
  py::list take_output() {
    py::list out;
    for (auto& c : queue_->take_output()) {
      out.append(py::make_tuple(c.request_id, c.engine, c.stream == 2 ? "stderr" : "stdout",
                                py::bytes(c.text).attr("decode")("utf-8", "replace")));
    }
    return out;
  }

 private:
  static constexpr Py_ssize_t kCopyBelow = 16 * 1024;

  // Views each object's memory without a copy (pickle protocol 5 buffers, bytes, numpy
  // arrays...). The memoryviews in `keep` hold the exporters until the request is done.
  // Exception: bytes objects of at most kCopyBelow bytes are copied, which is cheaper than a
  // memoryview, a list and an entry in borrowed_ for every small request.
  std::vector<SharedBytes> borrow(const py::list& segments, py::list& keep) {
    std::vector<SharedBytes> out;
    out.reserve(segments.size());
    for (py::handle obj : segments) {
      if (PyBytes_CheckExact(obj.ptr()) && PyBytes_GET_SIZE(obj.ptr()) <= kCopyBelow) {
        // Small and immutable (a pickled call): a copy costs less than keeping the object.
        out.push_back(SharedBytes::copy_of(std::string_view(PyBytes_AS_STRING(obj.ptr()),
                                                            static_cast<std::size_t>(PyBytes_GET_SIZE(obj.ptr())))));
        continue;
      }
      py::object view = py::reinterpret_steal<py::object>(PyMemoryView_FromObject(obj.ptr()));
      if (!view) throw py::error_already_set();
      Py_buffer* buf = PyMemoryView_GET_BUFFER(view.ptr());
      if (!PyBuffer_IsContiguous(buf, 'A')) {
        // Rare (pickle makes contiguous buffers): fall back to one copy.
        view = py::reinterpret_steal<py::object>(PyMemoryView_FromObject(
            py::bytes(py::reinterpret_borrow<py::object>(obj).attr("tobytes")()).ptr()));
        buf = PyMemoryView_GET_BUFFER(view.ptr());
      }
      out.push_back(SharedBytes::borrow(buf->buf, static_cast<std::size_t>(buf->len)));
      keep.append(view);
    }
    return out;
  }

  // Sends a request with the GIL released: a sealing client may first wait on the network
  // (the engines' seal keys, a pairing), and its network thread may need the GIL meanwhile
  // (a secret callable, output, Python buffers let go). Holding it there stalled both until
  // the wait timed out.
  struct Sent {
    AsyncResult result;
    double submitted;  // seconds since 1970, taken before anything was sealed or sent
  };
  template <typename Send>
  Sent without_gil(Send&& send) {
    Client& c = client();
    const double submitted =
        std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    py::gil_scoped_release release;
    return {send(c), submitted};
  }

  PyResult wrap(Sent sent, py::list keep = py::list()) {
    PyResult out = wrap(std::move(sent.result), std::move(keep));
    out.set_submitted(sent.submitted);
    return out;
  }
  PyResult wrap(AsyncResult result, py::list keep = py::list()) {
    sweep_borrowed();
    if (!keep.empty()) borrowed_.emplace(result.request_id(), std::make_pair(result, std::move(keep)));
    return PyResult(std::move(result), queue_);
  }

  // Lets go of the buffers of finished requests (their bytes were sent long before). A sweep
  // looks at every entry, so it runs only once the map has doubled since the last one:
  // amortised O(1) per request even with 100,000 in flight, and at most twice the buffers
  // of the requests still running are held.
  void sweep_borrowed() {
    if (borrowed_.size() < sweep_at_) return;
    for (auto it = borrowed_.begin(); it != borrowed_.end();) {
      it = it->second.first.ready() ? borrowed_.erase(it) : std::next(it);
    }
    sweep_at_ = std::max<std::size_t>(64, 2 * borrowed_.size());
  }

  std::unique_ptr<Client> client_;
  std::shared_ptr<CompletionQueue> queue_;
  std::map<std::uint64_t, std::pair<AsyncResult, py::list>> borrowed_;
  std::size_t sweep_at_ = 64;  // borrowed_ size that triggers the next sweep
};

// Test hooks: a reply with outcome number `number` as the client would receive it from the
// controller (encoded, decoded, read by the client), so tests can drive every outcome into
// Python, local ones included. A number the decoder refuses raises ValueError with its reason.
PyReply reply_for_test(std::uint16_t number, const std::string& reason, EngineId engine, const std::string& ename,
                       const std::string& evalue) {
  std::optional<Outcome> outcome = outcome_from_number(number);
  if (outcome && is_local(*outcome)) return PyReply{client::failed_reply(engine, *outcome, reason)};
  wire::Message m;
  m.envelope.kind = wire::MessageKind::kTaskReply;
  m.envelope.engine_id = engine;
  m.envelope.text = reason;
  if (outcome && (*outcome == Outcome::kOk || *outcome == Outcome::kPythonError)) {
    wire::ReplyMeta meta;
    meta.ok = *outcome == Outcome::kOk;
    meta.ename = ename;
    meta.evalue = evalue;
    meta.traceback = ename.empty() ? "" : "Traceback (most recent call last):\n" + ename + ": " + evalue + "\n";
    m = wire::task_reply(*outcome, {.engine_id = engine}, reason,
                         {wire::encode_reply_meta(meta), SharedBytes::copy_of(""), SharedBytes::copy_of("")});
  } else if (outcome) {
    m = wire::task_reply(*outcome, {.engine_id = engine}, reason);
  }
  std::vector<std::byte> head = wire::encode_head(m.envelope, m.segments);
  if (!outcome) {
    // Only the codec can carry a number no Outcome has: patch it into the head (u16 at 4).
    head[4] = static_cast<std::byte>(number & 0xFF);
    head[5] = static_cast<std::byte>(number >> 8);
  }
  auto decoded = wire::decode_head(head, wire::Limits{});
  if (!decoded.ok()) raise_python(PyExc_ValueError, decoded.status().message());
  m.envelope = decoded->envelope;
  return PyReply{client::engine_reply(std::move(m))};
}

// Raises what a control call raises when the controller answers with `outcome` and `reason`.
void raise_control_failure_for_test(Outcome outcome, const std::string& reason) {
  wire::Envelope request;
  request.kind = wire::MessageKind::kDbQuery;
  if (outcome == Outcome::kOk || is_local(outcome)) raise_status(outcome_status(outcome, reason));
  StatusOr<std::string> answer =
      client::control_answer(wire::control_refusal(wire::MessageKind::kDbQueryReply, request, 1, outcome, reason));
  if (!answer.ok()) raise_status(answer.status());
}

}  // namespace
}  // namespace testudo::python

PYBIND11_MODULE(_testudo, m) {
  using namespace testudo;
  using namespace testudo::python;
  m.doc() = "Native core of the testudo client (TLS 1.3, capability proofs, wire protocol).";
  m.attr("ANY_ENGINE") = kAnyEngine;
  // The client library logs to stderr; in a Python session only warnings and errors belong there.
  log::set_min_level(log::Level::kWarning);
  pyglue::define_segment(m);

  // testudo.Outcome: what became of a request (include/testudo/outcome.h; docs/tasks.md).
  py::enum_<Outcome> outcome(m, "Outcome", "What became of a request: one value per documented outcome.");
  for (Outcome o : kAllOutcomes) {
    std::string name(outcome_name(o));
    std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::toupper(c); });
    outcome.value(name.c_str(), o);
  }
  outcome.def_property_readonly("is_local", [](Outcome o) { return is_local(o); },
                                "Decided by the client itself (never sent by the controller).");
  m.def(
      "controller_address",
      [](const std::string& connection_file, const std::string& profile) {
        ClientOptions o;
        o.connection_file = connection_file;
        o.profile = profile;
        auto address = controller_address(o);
        if (!address.ok()) raise_status(address.status());
        return py::make_tuple(address->host, address->port, address->ssh);
      },
      py::arg("connection_file") = "", py::arg("profile") = "default",
      "(host, port, ssh) a connection file tells clients to dial; ssh: its SSH gateway unless the controller is "
      "on this host, else ''. The file's mode is checked as for a connection");
  m.def("_reply_for_test", &reply_for_test, py::arg("number"), py::arg("reason") = "", py::arg("engine_id") = 0,
        py::arg("ename") = "", py::arg("evalue") = "");
  m.def("_raise_control_failure_for_test", &raise_control_failure_for_test, py::arg("outcome"), py::arg("reason"));

  py::class_<PyReply>(m, "Reply", "One engine's answer to one request.")
      .def_property_readonly("engine_id", [](const PyReply& r) { return r.reply.engine_id; })
      .def_property_readonly("task_id", [](const PyReply& r) { return r.reply.task_id; })
      .def_property_readonly("ok", [](const PyReply& r) { return r.reply.status.ok(); })
      .def_property_readonly("outcome", [](const PyReply& r) { return r.reply.outcome; })
      .def_property_readonly("message", [](const PyReply& r) { return r.reply.status.message(); })
      .def_property_readonly("ename", [](const PyReply& r) { return r.reply.remote_error ? r.reply.remote_error->ename : ""; })
      .def_property_readonly("evalue", [](const PyReply& r) { return r.reply.remote_error ? r.reply.remote_error->evalue : ""; })
      .def_property_readonly("traceback",
                             [](const PyReply& r) { return r.reply.remote_error ? r.reply.remote_error->traceback : ""; })
      .def_property_readonly("stdout", [](const PyReply& r) { return r.reply.stdout_text; })
      .def_property_readonly("stderr", [](const PyReply& r) { return r.reply.stderr_text; })
      .def_property_readonly("started", [](const PyReply& r) { return r.reply.started_us / 1e6; })
      .def_property_readonly("completed", [](const PyReply& r) { return r.reply.completed_us / 1e6; })
      .def_property_readonly("summary",
                             [](const PyReply& r) {
                               return py::make_tuple(r.reply.engine_id, r.reply.status.ok(), r.reply.started_us / 1e6,
                                                     r.reply.completed_us / 1e6, r.reply.stdout_text,
                                                     r.reply.stderr_text);
                             },
                             "(engine_id, ok, started, completed, stdout, stderr) in one call.")
      .def_property_readonly("value", [](const PyReply& r) {
        py::list out;
        for (const auto& s : r.reply.value) out.append(py::cast(pyglue::Segment{s}));
        return out;
      });

  py::class_<PyResult>(m, "Result", "A request in flight to one or more engines.")
      .def_property_readonly("request_id", &PyResult::request_id)
      .def_property_readonly("submitted", &PyResult::submitted)
      .def_property_readonly("targets", &PyResult::targets)
      .def("ready", &PyResult::ready)
      .def("wait", &PyResult::wait, py::arg("timeout"), "Waits up to timeout seconds; True once every engine answered.")
      .def("watch", &PyResult::watch, "Report this request to Client.next_completed when done.")
      .def("task_ids", &PyResult::task_ids, py::arg("timeout") = 10.0,
           "The controller's task ids for this request (waits for its acknowledgement).")
      .def("outcome", &PyResult::outcome,
           "[(engine_id, task_id, ok, started, completed, stdout, stderr, value segments)] in target order "
           "(must be ready).")
      .def("replies", &PyResult::replies, "The replies in target order (the result must be ready).");

  py::class_<PyClient>(m, "Client", "A connection to a testudo controller.")
      .def(py::init<const std::string&, const std::string&, double, const std::string&, const std::string&,
                    const std::string&, std::uint16_t, const py::object&, const std::string&, const std::string&,
                    const py::object&, const std::string&, const std::string&, const std::string&,
                    const std::vector<std::string>&,
                    const std::string&, std::uint64_t>(),
           py::arg("connection_file") = "", py::arg("profile") = "default", py::arg("timeout") = 10.0,
           py::arg("identity_dir") = "", py::arg("key_passphrase_from") = "", py::arg("dial_host") = "",
           py::arg("dial_port") = 0, py::arg("key_passphrase") = py::none(), py::arg("login_method") = "",
           py::arg("username") = "", py::arg("secret") = py::none(), py::arg("secret_from") = "",
           py::arg("service") = "", py::arg("e2e") = "auto", py::arg("engine_keys") = std::vector<std::string>{},
           py::arg("engine_cafile") = "", py::arg("bulk_from_bytes") = std::uint64_t{1} << 20)
      .def("close", &PyClient::close)
      .def_property_readonly("connected", &PyClient::connected)
      .def_property_readonly("client_id", &PyClient::client_id)
      .def("engine_ids", &PyClient::engine_ids)
      .def("cluster_status", &PyClient::cluster_status)
      .def("shutdown_cluster", &PyClient::shutdown_cluster)
      .def("execute", &PyClient::execute, py::arg("targets"), py::arg("code"), py::arg("display_result") = false)
      .def("push", &PyClient::push, py::arg("targets"), py::arg("segments"))
      .def("pull", &PyClient::pull, py::arg("targets"), py::arg("names"))
      .def("apply", &PyClient::apply, py::arg("targets"), py::arg("segments"))
      .def("apply_balanced", &PyClient::apply_balanced, py::arg("allowed"), py::arg("segments"),
           py::arg("retries") = 0, py::arg("timeout") = 0.0, py::arg("after") = std::vector<std::uint64_t>{},
           py::arg("follow") = std::vector<std::uint64_t>{},
           py::arg("after_rule") = std::tuple<bool, bool, bool>{true, true, false},
           py::arg("follow_rule") = std::tuple<bool, bool, bool>{true, true, false})
      .def("abort", &PyClient::abort, py::arg("task_ids"))
      .def("interrupt", &PyClient::interrupt, py::arg("targets"))
      .def("queue_status", &PyClient::queue_status)
      .def("get_result", &PyClient::get_result, py::arg("task_ids"))
      .def("result_status", &PyClient::result_status, py::arg("task_ids"))
      .def("db_query", &PyClient::db_query, py::arg("filter"))
      .def("purge_results", &PyClient::purge_results, py::arg("task_ids"))
      .def("shutdown_engines", &PyClient::shutdown_engines, py::arg("targets"))
      .def("engines_json", &PyClient::engines_json)
      .def("seal_violations", &PyClient::seal_violations)
      .def("sealing", &PyClient::sealing)
      .def("take_output", &PyClient::take_output, "Live output chunks received since the last call.")
      .def("next_completed", &PyClient::next_completed, py::arg("timeout"),
           "Request ids of watched results finished since the last call (waits up to timeout seconds).");
}
