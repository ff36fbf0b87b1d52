from testudo import Client  # noqa: F401
