"""The two helpers of ipyparallel.util that its tests import as public API."""

from datetime import timezone

from testudo import interactive  # noqa: F401

utc = timezone.utc
