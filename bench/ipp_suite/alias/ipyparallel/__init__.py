"""`ipyparallel` as another name for testudo, so ipyparallel's own tests run against it
(bench/ipp_suite/run). Only names of ipyparallel's public API are provided; a test that
reaches for ipyparallel's internals fails on purpose."""

import sys

import testudo
from testudo import *  # noqa: F401,F403
from testudo import error

from . import util  # noqa: F401

sys.modules[__name__ + ".error"] = error

__version__ = "7.1.0"


def __getattr__(name):
    return getattr(testudo, name)
