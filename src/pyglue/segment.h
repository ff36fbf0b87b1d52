// Segment: a SharedBytes seen from Python through the buffer protocol, without a copy.
// Defined by the engine's embedded module and by the client's extension module: a numpy array
// unpickled from a Segment keeps it (and so the received bytes) alive by reference.
// Module-local in each: both modules live in one interpreter when user code on an engine
// imports testudo, and pybind11 refuses a second global registration of one C++ type. Neither
// side hands its Segments to the other's C++ code (Python sees only a buffer), so a private
// type per module is exact; sharing one would make the engine depend on the client extension.
// Header-only; include only where pybind11 is available. Use with the GIL held.
#pragma once

#include <pybind11/pybind11.h>

#include "testudo/shared_bytes.h"

namespace testudo::pyglue {

struct Segment {
  SharedBytes bytes;
};

inline void define_segment(pybind11::module_& m) {
  namespace py = pybind11;
  // The buffer protocol wants a non-null pointer even for zero bytes.
  static unsigned char empty_byte = 0;
  py::class_<Segment>(m, "Segment", py::buffer_protocol(), py::module_local(),
                      "Received bytes (a message segment), exposed without a copy.")
      .def_buffer([](Segment& s) -> py::buffer_info {
        void* data = s.bytes.empty() ? static_cast<void*>(&empty_byte) : static_cast<void*>(s.bytes.data());
        // Writable: a received segment belongs to this process alone, and numpy arrays
        // unpickled from it should be as writable as any other array.
        return py::buffer_info(data, 1, py::format_descriptor<unsigned char>::format(), 1,
                               {static_cast<py::ssize_t>(s.bytes.size())}, {py::ssize_t{1}}, /*readonly=*/false);
      })
      .def("__len__", [](const Segment& s) { return s.bytes.size(); })
      .def("tobytes", [](const Segment& s) { return py::bytes(reinterpret_cast<const char*>(s.bytes.data()), s.bytes.size()); });
}

}  // namespace testudo::pyglue
