from testudo._joblib import TestudoBackend as IPythonParallelBackend  # noqa: F401
