"""KafkaSource.poll without a broker: a scripted consumer stands in for confluent-kafka's, so
what poll does with each sequence of messages and EOF events is exact (no timing). Session 10:
poll stops waiting once every assigned partition is at its end, and a rebalance between two
waits drops what it held of a revoked partition; the consumer's fetch settings."""

from __future__ import annotations

import pytest

import rtml.sources
from rtml.runner import Runner
from services import require_module
from stream_helpers import feature_set, to_json_messages, workload

require_module("confluent_kafka")

from confluent_kafka import KafkaError, Message, TopicPartition  # noqa: E402

TOPIC = "t"


def msg(p: int, o: int) -> Message:
    return Message(topic=TOPIC, partition=p, offset=o, value=f'{{"p":{p},"o":{o}}}'.encode())


def eof(p: int, o: int) -> Message:
    return Message(topic=TOPIC, partition=p, offset=o, error=KafkaError(KafkaError._PARTITION_EOF))


class ScriptedConsumer:
    """`consume` answers the next chunk of `chunks` (then nothing), after running the hook
    registered for that call (1-based), as librdkafka runs rebalance callbacks inside it."""

    def __init__(self, chunks, hooks=None):
        self.chunks = list(chunks)
        self.hooks = dict(hooks or {})
        self.calls: list[tuple[int, float]] = []
        self.assignment = None

    def consume(self, num_messages, timeout):
        self.calls.append((num_messages, timeout))
        hook = self.hooks.get(len(self.calls))
        if hook is not None:
            hook()
        got = self.chunks.pop(0) if self.chunks else []
        assert len(got) <= num_messages
        return got

    def assign(self, tps):
        self.assignment = [(tp.partition, tp.offset) for tp in tps]

    def unassign(self):
        self.assignment = []

    def get_watermark_offsets(self, tp, timeout=None, cached=True):
        return (0, 1_000)


def source(consumer, partitions=(0, 1), at_end=False):
    src = rtml.sources.kafka("127.0.0.1:1", TOPIC, "g")
    src._consumer = consumer
    for p in partitions:
        src._assigned[p] = None
        src._eof[p] = at_end
    return src


def contents(batches):
    return {b.partition: (list(b.positions), list(b.payloads), b.end) for b in batches}


def expected(msgs):
    """The batches of one poll over `msgs`, by hand: each partition's messages in order."""
    out: dict[int, tuple[list[int], list[bytes], int]] = {}
    for m in msgs:
        if m.error() is None:
            offs, vals, _ = out.get(m.partition(), ([], [], 0))
            out[m.partition()] = (offs + [m.offset()], vals + [m.value()], m.offset() + 1)
    return out


def test_poll_returns_once_every_partition_is_at_its_end():
    chunk = [msg(0, 0), msg(1, 0), msg(0, 1), eof(0, 2), eof(1, 1)]
    c = ScriptedConsumer([chunk])
    src = source(c)
    # a long timeout: waiting it out would take minutes and call consume again and again
    got = src.poll(10_000, 600.0)
    assert len(c.calls) == 1
    assert contents(got) == expected(chunk)
    assert src.idle()


def test_poll_keeps_waiting_while_a_partition_may_have_more():
    first = [msg(0, 0), eof(0, 1), msg(1, 0)]  # partition 1: no EOF yet
    second = [msg(1, 1), eof(1, 2)]
    c = ScriptedConsumer([first, second])
    src = source(c)
    got = src.poll(100, 600.0)
    assert len(c.calls) == 2
    assert c.calls[1][0] == 100 - len(first)  # never more than max_records in all
    assert contents(got) == expected(first + second)
    assert src.idle()


def test_poll_data_after_an_eof_is_not_the_end():
    first = [msg(0, 0), eof(0, 1), msg(0, 1)]  # new data arrived after the EOF
    second = [eof(0, 2)]
    c = ScriptedConsumer([first, second])
    src = source(c, partitions=(0,))
    got = src.poll(100, 600.0)
    assert len(c.calls) == 2
    assert contents(got) == expected(first + second)
    assert src.idle()


def test_poll_a_full_batch_returns_at_once():
    chunk = [msg(0, i) for i in range(10)]
    c = ScriptedConsumer([chunk, [msg(0, 10)]])
    src = source(c, partitions=(0,))
    got = src.poll(10, 600.0)
    assert len(c.calls) == 1
    assert contents(got) == expected(chunk)
    assert not src.idle()


class Clock:
    """A monotonic clock that the scripted consumer advances by each call's timeout."""

    def __init__(self):
        self.now = 1_000.0

    def monotonic(self):
        return self.now

    def sleep(self, s):
        self.now += s


class Waiting(ScriptedConsumer):
    """A scripted consumer that waits out each call's timeout on `clock`."""

    def __init__(self, clock, chunks, hooks=None):
        super().__init__(chunks, hooks)
        self.clock = clock

    def consume(self, num_messages, timeout):
        self.clock.now += timeout
        return super().consume(num_messages, timeout)


def test_poll_with_nothing_new_waits_its_timeout_and_answers_nothing(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(rtml.sources, "time", clock)
    c = Waiting(clock, [])
    src = source(c, at_end=True)
    assert src.poll(100, 0.05) == []
    # (every partition was at its end already: nothing new is no reason to answer early)
    assert [t for _, t in c.calls] == pytest.approx([0.02, 0.02, 0.01])
    assert src.idle()


def test_poll_short_timeout_is_one_consume_call(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(rtml.sources, "time", clock)
    c = Waiting(clock, [[msg(0, 0)]])
    src = source(c, partitions=(0,))
    got = src.poll(100, 0.01)
    assert c.calls == [(100, 0.01)]
    assert contents(got) == expected([msg(0, 0)])


def test_poll_reads_in_chunks_that_add_up_to_one_batch(monkeypatch):
    """At most _CONSUME_CHUNK messages per consume call (their Message objects dropped before
    the next), the batch the same as one call's: max_records in all, in order."""
    monkeypatch.setattr(rtml.sources, "_CONSUME_CHUNK", 4)
    stream = [msg(i % 2, i // 2) for i in range(9)] + [eof(0, 5), msg(1, 4), eof(1, 5)]
    c = ScriptedConsumer([stream[0:4], stream[4:8], stream[8:12]])
    src = source(c)
    got = src.poll(100, 600.0)
    assert [n for n, _ in c.calls] == [4, 4, 4]
    assert contents(got) == expected(stream)
    assert src.idle()
    c = ScriptedConsumer([stream[0:4], stream[4:6], stream[6:10]])
    src = source(c)
    got = src.poll(6, 600.0)  # max_records: the second call asks for 2
    assert [n for n, _ in c.calls] == [4, 2]
    assert contents(got) == expected(stream[:4] + stream[4:6])
    assert not src.idle()


def test_poll_rebalance_between_waits_drops_what_it_held_of_a_revoked_partition():
    """Partition 0 is revoked and handed back (from its checkpoint, offset 0) inside the second
    consume call: the messages of partition 0 held from the first call come again after it and
    must be in the batch once; partition 1's are kept, and so is its EOF event (held from the
    first call: partition 1 is at its end)."""
    first = [msg(0, 0), msg(1, 0), msg(1, 1), eof(1, 2), msg(0, 1)]
    second = [msg(0, 0), msg(0, 1), msg(0, 2), eof(0, 3)]
    revoked, assigned = [], []
    src = rtml.sources.kafka("127.0.0.1:1", TOPIC, "g")

    def rebalance():
        src._revoke_cb(c, [TopicPartition(TOPIC, 0)])
        src._assign_cb(c, [TopicPartition(TOPIC, 0)])

    c = ScriptedConsumer([first, second], hooks={2: rebalance})
    src._consumer = c
    src._on_assign = lambda parts: (assigned.append(parts), {p: 0 for p in parts})[1]
    src._on_revoke = revoked.append
    for p in (0, 1):
        src._assigned[p], src._eof[p] = 0, False
    got = src.poll(100, 600.0)
    assert revoked == [[0]] and assigned == [[0]]
    assert c.assignment == [(0, 0)]
    assert contents(got) == {0: ([0, 1, 2], [msg(0, i).value() for i in range(3)], 3),
                             1: ([0, 1], [msg(1, 0).value(), msg(1, 1).value()], 2)}
    assert src.idle()


def test_consumer_fetch_settings_and_user_overrides(monkeypatch):
    import confluent_kafka

    seen = []

    class Recorder:
        def __init__(self, conf):
            seen.append(conf)

        def subscribe(self, topics, **callbacks):
            pass

    monkeypatch.setattr(confluent_kafka, "Consumer", Recorder)
    rtml.sources.kafka("h:1", TOPIC, "g").open(lambda parts: {}, lambda parts: None)
    rtml.sources.kafka("h:1", TOPIC, "g", config={"fetch.wait.max.ms": 500}).open(
        lambda parts: {}, lambda parts: None)
    assert seen[0]["fetch.queue.backoff.ms"] == 20 and seen[0]["fetch.wait.max.ms"] == 100
    assert seen[1]["fetch.wait.max.ms"] == 500 and seen[1]["fetch.queue.backoff.ms"] == 20
    assert seen[0]["enable.partition.eof"] is True


def test_run_until_idle_does_not_poll_again_after_the_last_events(tmp_path):
    fs = feature_set()
    ev = workload(3_000, 200, seed=3)
    payloads = to_json_messages(ev)
    src = rtml.sources.replay_messages(payloads, ev.column("user").to_pylist(), 2)
    polls = []
    poll = src.poll

    def counting(max_records, timeout):
        got = poll(max_records, timeout)
        polls.append(sum(len(b) for b in got))
        return got

    src.poll = counting
    r = Runner(fs, src, tmp_path, max_batch=1_000)
    assert r.run_until_idle() == len(payloads)
    assert 0 not in polls  # (it used to poll once more, for nothing, to find out)
    assert sum(polls) == len(payloads)
