"""ipyparallel 7.1 API that testudo adds in pure Python (issue 16): ar['engine_id'] /
ar.engine_id. Our own tests against a real cluster; the behaviour compared is ipyparallel's
(client/view.py, client/remotefunction.py, client/asyncresult.py)."""

import os
import time

import pytest

import testudo
from testudo import error


@testudo.interactive  # travels by value: engines cannot import this test module
def pid_of(x):
    import os
    return os.getpid()


@testudo.interactive
def slow_square(x):
    import time
    time.sleep(0.3 if x == 0 else 0.0)
    return x * x


def test_engine_id(rc):
    ar = rc[2].apply_async(os.getpid)
    ar.get(timeout=10)
    assert ar.engine_id == rc.ids[2] == ar["engine_id"]
    ar = rc[:].apply_async(os.getpid)
    ar.get(timeout=10)
    assert ar.engine_id == list(rc.ids) == ar["engine_id"]
    lb = rc.load_balanced_view()
    ar = lb.apply_async(pid_of, 0)
    pid = ar.get(timeout=10)
    assert ar.engine_id in rc.ids
    assert rc[ar.engine_id].apply_sync(os.getpid) == pid  # the engine that really ran it
    assert ar["status"] == "ok"
    with pytest.raises(KeyError):
        ar["no such key"]
    with pytest.raises(TypeError):
        ar[1.5]


def test_engine_id_before_done(rc):
    ar = rc.load_balanced_view().apply_async(time.sleep, 0.5)
    assert ar["engine_id"] is None  # no waiting: the scheduler has not said where yet
    ar.get(timeout=10)
    assert ar["engine_id"] in rc.ids
    ar = rc[1].apply_async(time.sleep, 0.5)
    assert ar.engine_id == rc.ids[1]  # a direct request knows its engine at once


def test_getitem_result(rc):
    ar = rc[:].apply_async(lambda: 7)
    ar.get(timeout=10)
    assert ar[0] == 7 and ar[1:3] == [7, 7]
    pending = rc[0].apply_async(time.sleep, 0.5)
    with pytest.raises(error.TimeoutError):
        pending[0]
    pending.get(timeout=10)
