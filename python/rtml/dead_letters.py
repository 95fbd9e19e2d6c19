"""Dead-letter sinks of `rtml.Runner`: where malformed events go when not to Parquet files.

By default a runner writes its dead letters to Parquet files in its checkpoint directory
(docs/streaming.md, "Bad input"). ``Runner(..., dead_letters=URL)`` sends them to a Kafka topic
or a Redis stream instead, in the URL style of the sources:

* ``kafka://host:port/topic``: one message per dead letter; the value is the raw payload (null
  for a replay row), the key is the idempotency key ``<partition>:<offset>``, the headers are
  ``rtml.partition``, ``rtml.offset``, ``rtml.reason``, ``rtml.source`` (the stream's name,
  e.g. ``kafka:events``) and ``rtml.spec_sha256`` (the feature set's hash).
* ``redis://host:port/db?stream=NAME``: one ``XADD`` per dead letter with the fields ``key``,
  ``partition``, ``offset``, ``reason``, ``source``, ``spec_sha256`` and ``payload`` (absent for
  a replay row).

Exactly once, and its limit: a checkpoint's dead letters are sent, and *acknowledged* by the
broker, before the checkpoint that covers their offsets is written; a sink that does not
acknowledge within `timeout` raises `rtml.sources.SourceError` and no checkpoint is written. A
crash after the send and before the checkpoint makes the runner read those events again and
send their dead letters again: a dead letter can be delivered more than once, never lost.
Deduplicate on the key ``<partition>:<offset>`` (one message of one partition of one stream;
runners of several feature sets on one stream each send their own copy, told apart by
``rtml.spec_sha256``).

>>> from rtml.dead_letters import dead_letter_sink
>>> sink = dead_letter_sink("kafka://127.0.0.1:9092/bad-events")
>>> (sink.topic, sink.bootstrap)
('bad-events', '127.0.0.1:9092')
>>> dead_letter_sink("redis://127.0.0.1:6379/0?stream=bad").stream
'bad'
>>> idempotency_key(3, "1700000000000-0")
'3:1700000000000-0'
"""

from __future__ import annotations

import time
from typing import Any, Optional, Sequence, Union

from .exceptions import SpecError
from .sources import SourceError, _duration_ns

__all__ = [
    "DeadLetterSink",
    "KafkaDeadLetters",
    "RedisDeadLetters",
    "dead_letter_sink",
    "idempotency_key",
]

#: one dead letter as the runner keeps it: (offset or position as text, reason, raw payload)
DeadLetter = tuple[str, str, Optional[bytes]]


def idempotency_key(partition: int, offset: str) -> str:
    """The key of a dead letter: the same message of the same partition always has the same
    one, so copies re-sent after a crash can be dropped downstream."""
    return f"{partition}:{offset}"


class DeadLetterSink:
    """Where a runner sends its dead letters (subclass for another system: `send`, `close`)."""

    #: the sink as a URL-like text, for messages and metrics
    name: str = "sink"

    def __init__(self) -> None:
        self.source = ""
        self.spec_sha256 = ""
        self.sent = 0

    def bind(self, source: str, spec_sha256: str) -> None:
        """Called once by the runner: the name of the stream it reads and its feature set's hash."""
        self.source = source
        self.spec_sha256 = spec_sha256

    def send(self, partition: int, letters: Sequence[DeadLetter]) -> None:
        """Deliver `letters` of `partition` and return once the broker acknowledged every one
        (else raise `rtml.sources.SourceError`): the runner writes the checkpoint after."""
        raise NotImplementedError

    def close(self) -> None:
        pass


class KafkaDeadLetters(DeadLetterSink):
    """Dead letters to a Kafka topic (confluent-kafka producer, ``acks=all``)."""

    def __init__(
        self, bootstrap: str, topic: str, config: Optional[dict[str, Any]], timeout: float
    ) -> None:
        super().__init__()
        self.bootstrap = bootstrap
        self.topic = topic
        self.timeout = timeout
        self.name = f"kafka://{bootstrap}/{topic}"
        self._config = dict(config or {})
        self._producer: Any = None

    def send(self, partition: int, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        if self._producer is None:
            from confluent_kafka import Producer

            conf: dict[str, Any] = {
                "bootstrap.servers": self.bootstrap,
                "acks": "all",
                "linger.ms": 5,
            }
            conf.update(self._config)
            self._producer = Producer(conf)
        failed: list[str] = []

        def report(err: Any, msg: Any) -> None:
            if err is not None:
                failed.append(str(err))

        for offset, reason, payload in letters:
            self._producer.produce(
                self.topic,
                payload,
                key=idempotency_key(partition, offset).encode(),
                headers=[
                    ("rtml.partition", str(partition).encode()),
                    ("rtml.offset", offset.encode()),
                    ("rtml.reason", reason.encode()),
                    ("rtml.source", self.source.encode()),
                    ("rtml.spec_sha256", self.spec_sha256.encode()),
                ],
                on_delivery=report,
            )
        left = self._producer.flush(self.timeout)
        if left or failed:
            why = f"{left} not acknowledged within {self.timeout:g}s" if left else failed[0]
            raise SourceError(
                f"partition {partition}: dead letters could not be delivered to {self.name} "
                f"({why}); no checkpoint written"
            )
        self.sent += len(letters)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(self.timeout)
            self._producer = None


class RedisDeadLetters(DeadLetterSink):
    """Dead letters to a Redis stream (one ``XADD`` each, in one pipeline per checkpoint)."""

    def __init__(self, url: str, stream: str, timeout: float) -> None:
        super().__init__()
        self.url = url
        self.stream = stream
        self.timeout = timeout
        self.name = f"{url}?stream={stream}"
        self._client: Any = None

    def send(self, partition: int, letters: Sequence[DeadLetter]) -> None:
        if not letters:
            return
        import redis

        delay, deadline = 0.05, time.monotonic() + self.timeout
        while True:
            try:
                if self._client is None:
                    self._client = redis.Redis.from_url(self.url, socket_timeout=self.timeout)
                pipe = self._client.pipeline(transaction=True)
                for offset, reason, payload in letters:
                    fields: dict[str, Union[str, bytes]] = {
                        "key": idempotency_key(partition, offset),
                        "partition": str(partition),
                        "offset": offset,
                        "reason": reason,
                        "source": self.source,
                        "spec_sha256": self.spec_sha256,
                    }
                    if payload is not None:
                        fields["payload"] = payload
                    pipe.xadd(self.stream, fields)
                pipe.execute()
                self.sent += len(letters)
                return
            except (redis.ConnectionError, redis.TimeoutError) as e:
                if time.monotonic() + delay > deadline:
                    raise SourceError(
                        f"partition {partition}: dead letters could not be delivered to "
                        f"{self.name} within {self.timeout:g}s ({e}); no checkpoint written"
                    ) from e
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
            except redis.ResponseError as e:
                raise SourceError(
                    f"partition {partition}: dead letters refused by {self.name}: {e}; "
                    "no checkpoint written"
                ) from e

    def close(self) -> None:
        if self._client is not None:
            try:
                self._client.close()
            finally:
                self._client = None


def dead_letter_sink(
    url: str, *, timeout: Any = "30s", config: Optional[dict[str, Any]] = None
) -> DeadLetterSink:
    """A sink from a URL: ``kafka://host:port/topic`` or ``redis://host:port/db?stream=NAME``
    (``rediss://`` too). `timeout`: how long a checkpoint waits for the broker's
    acknowledgement ('30s', seconds). `config`: extra confluent-kafka producer settings."""
    from urllib.parse import parse_qs, urlparse

    u = urlparse(url)
    seconds = _duration_ns(timeout, "dead_letters timeout") / 1e9
    if u.scheme == "kafka":
        topic = u.path.lstrip("/")
        if not u.netloc or not topic or "/" in topic:
            raise SpecError(f"dead_letters {url!r}: expected kafka://host:port/topic")
        return KafkaDeadLetters(u.netloc, topic, config, seconds)
    if u.scheme in ("redis", "rediss"):
        q = {k: v[-1] for k, v in parse_qs(u.query).items()}
        if not q.get("stream"):
            raise SpecError(f"dead_letters {url!r}: expected redis://host:port/db?stream=NAME")
        return RedisDeadLetters(f"{u.scheme}://{u.netloc}{u.path}", q["stream"], seconds)
    raise SpecError(
        f"dead_letters {url!r}: expected kafka://host:port/topic or "
        "redis://host:port/db?stream=NAME (None: Parquet files in the checkpoint directory)"
    )
