"""The client's decoder of an engine's execute reply (one JSON segment): anything an engine or
the network may send ends as MalformedReply on that engine's result, never as another
exception or a crash. No cluster: bytes straight into the decoder and into an AsyncResult."""

import json
import random

import pytest

import testudo
from testudo import AsyncResult, error
from testudo._execute_reply import ExecuteReply, decode


def test_decode_valid_replies():
    assert decode([b'{"execution_count": 0}']) == (0, None)
    count, result = decode([memoryview(b'{"execution_count": 4, "data": {"text/plain": "5"}, "metadata": {}}')])
    assert count == 4
    assert result == {"data": {"text/plain": "5"}, "metadata": {}, "execution_count": 4}
    # Metadata may be left out; non-ASCII text is UTF-8.
    assert decode(['{"execution_count": 1, "data": {"text/plain": "é"}}'.encode()])[1]["data"] == {"text/plain": "é"}


@pytest.mark.parametrize("segments", [
    [],
    [b'{"execution_count": 1}', b"extra"],
    [b""],
    [b"\xff\xfe"],
    [b"not json"],
    [b"[1, 2]"],
    [b'"text"'],
    [b"{}"],
    [b'{"execution_count": -1}'],
    [b'{"execution_count": 1.5}'],
    [b'{"execution_count": true}'],
    [b'{"execution_count": "1"}'],
    [b'{"execution_count": 1, "data": []}'],
    [b'{"execution_count": 1, "data": {}, "metadata": "x"}'],
    [b"[" * 100_000],  # deep nesting: RecursionError in json
    [b'{"execution_count": 1, "data": ' + b"[" * 100_000 + b"}"],
])
def test_decode_refuses_malformed_replies(segments):
    with pytest.raises(error.MalformedReply):
        decode(segments)


def test_decode_random_bytes_only_ever_malformed():
    rng = random.Random(16)
    valid = json.dumps({"execution_count": 3, "data": {"text/plain": "x", "image/png": "AAAA"},
                        "metadata": {"image/png": {"width": 1}}}).encode()
    for _ in range(3000):
        data = bytearray(valid)
        for _ in range(rng.randint(1, 8)):
            op = rng.randrange(3)
            pos = rng.randrange(len(data) + 1)
            if op == 0 and data:
                del data[min(pos, len(data) - 1)]
            elif op == 1:
                data.insert(pos, rng.randrange(256))
            elif data:
                data[min(pos, len(data) - 1)] = rng.randrange(256)
        try:
            count, result = decode([bytes(data)])
        except error.MalformedReply:
            continue
        assert type(count) is int and count >= 0
        assert result is None or (isinstance(result["data"], dict) and isinstance(result["metadata"], dict))


class _FakeChild:
    """A native request that has finished, with one engine's reply `segments`."""

    targets = [0]

    def __init__(self, segments):
        self._segments = segments

    def ready(self):
        return True

    def wait(self, timeout):
        return True

    def outcome(self):
        return [(0, 9, True, 1.0, 2.0, "out\n", "", self._segments)]


class _FakeClient:
    def _track(self, children, ar):
        pass

    def _untrack(self, children):
        pass


def test_a_malformed_reply_fails_that_engines_result_only():
    ar = AsyncResult(_FakeClient(), [_FakeChild([b"junk"])], "execute", "execute", single=True)
    with pytest.raises(testudo.RemoteError) as info:
        ar.get(timeout=1)
    assert info.value.ename == "MalformedReply"
    assert "not JSON" in info.value.evalue


def test_a_good_reply_becomes_an_execute_reply():
    segment = b'{"execution_count": 2, "data": {"text/plain": "7", "text/html": "<i>7</i>"}, "metadata": {}}'
    ar = AsyncResult(_FakeClient(), [_FakeChild([segment])], "execute", "execute", single=True)
    reply = ar.get(timeout=1)
    assert isinstance(reply, ExecuteReply)
    assert (reply.execution_count, reply.msg_id, reply.engine_id, reply.stdout) == (2, "9", 0, "out\n")
    assert reply._repr_html_() == "<i>7</i>"
    assert reply._repr_mimebundle_() == ({"text/plain": "Out[0:2]: 7", "text/html": "<i>7</i>"}, {})
    assert ar.execute_result["data"]["text/plain"] == "7"
    assert ar.metadata is reply.metadata and reply.received is not None
