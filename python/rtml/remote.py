"""Shared online state in Redis: one writer per partition, any number of readers.

`RedisPublisher` (given to `Runner(..., publish=...)`) writes, for every key whose state changed,
that key's exact window state (the engine snapshot's per-key encoding with a small header) to
Redis, at least every `publish_every` and at each checkpoint. `RemoteEngine` (or
`FeatureSet.remote(url)`) reads those values and evaluates queries over them in Rust with the very
function the in-process `OnlineEngine.get` runs, so a replica's answer equals the in-process
engine's and `fs.backfill`'s, bit for bit. docs/shared-state.md has the key layout, expiry,
freshness and failure behaviour.

>>> import rtml
>>> fs = rtml.FeatureSet(entity="user", timestamp="ts", features=[rtml.count(window="1h")])
>>> remote = rtml.RemoteEngine(fs, "redis://127.0.0.1:6379/0")   # doctest: +SKIP
>>> remote.get(42, at="2024-05-01T12:00:00Z")                     # doctest: +SKIP
{'count_1h': 3}
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import TYPE_CHECKING, Any, Iterable, Optional, Sequence, Union

import numpy as np

from . import _core
from .exceptions import KeyStateError, RemoteUnavailableError, SnapshotError, SpecError
from .online import Instant, Key, _spec_of, iso_ns

if TYPE_CHECKING:
    from .features import FeatureSet
    from .transforms import Transforms

__all__ = ["RemoteEngine", "RedisPublisher", "namespace_of", "KEYSTATE_VERSION"]

#: format version of a published key state (docs/shared-state.md)
KEYSTATE_VERSION: int = _core.KEYSTATE_VERSION


def namespace_of(feature_set: Any, prefix: str = "rtml") -> tuple[str, int]:
    """(namespace, spec id) of a feature set: ``<prefix>:<first 16 hex digits of the SHA-256 of
    its JSON document>`` and those 8 bytes as an int. Two versions of a feature set never share a
    namespace, so they never read each other's state.

    >>> import rtml
    >>> fs = rtml.FeatureSet(entity="u", timestamp="ts", features=[rtml.count()])
    >>> ns, sid = namespace_of(fs)
    >>> ns.startswith("rtml:") and len(ns) == 21 and sid == int(ns[5:], 16)
    True
    """
    if ":" in prefix or "{" in prefix or "}" in prefix:
        raise SpecError(f"prefix: {prefix!r} must not contain ':', '{{' or '}}'")
    digest = hashlib.sha256(_spec_of(feature_set).to_json().encode()).hexdigest()[:16]
    return f"{prefix}:{digest}", int(digest, 16)


def _redis_errors() -> tuple[type[BaseException], ...]:
    import redis

    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


def _client(url: str, timeout: float) -> Any:
    """A redis-py client that fails within `timeout` (connect and each reply), never retrying."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        health_check_interval=0,
    )


def _rust_conn(url: str, timeout: float) -> Optional[Any]:
    """A `_core.RedisConn` (the Rust client) for a plain ``redis://`` URL; None for what it
    does not speak (TLS ``rediss://``, unix sockets): redis-py serves those."""
    from urllib.parse import unquote, urlparse

    u = urlparse(url)
    if u.scheme != "redis" or not u.hostname:
        return None
    path = u.path.strip("/")
    try:
        db = int(path) if path else 0
    except ValueError:
        raise SpecError(f"url: {url!r}: the path must be a database number") from None
    return _core.RedisConn(
        u.hostname,
        u.port or 6379,
        db,
        unquote(u.username) if u.username else None,
        unquote(u.password) if u.password else None,
        timeout,
    )


def _duration_s(value: Any, what: str) -> float:
    from .sources import _duration_ns

    return _duration_ns(value, what) / 1e9


class RedisPublisher:
    """Publishes the state of every changed key of a runner's partitions to Redis.

    `url`: ``redis://host:port/db``. `prefix`: the namespace prefix (the namespace is
    ``<prefix>:<spec hash>``). `publish_every`: how often the runner publishes (at least; also
    at each checkpoint). `batch`: keys per pipelined round trip. `timeout`: socket timeout
    of the writer's connection (seconds). `client`: an existing redis-py client instead of
    `url`. `deltas`: through the Rust client (a ``redis://`` URL), a key whose stored value the
    writer knows gets only the events applied since its last publish, appended to the value
    (``APPEND``, a delta segment), until the segments would outgrow the value's base, which is
    then rewritten whole; False writes every value whole (a redis-py `client` always does).

    Values expire (``PXAT``) after the feature set's ``ttl`` past their key's last event, on the
    wall clock: ``now + (last_event + ttl - watermark)`` (docs/shared-state.md). A failed publish
    (Redis down) is counted in ``Runner.metrics()["publish"]`` and the partition is published in
    full at the next attempt; so is a partition whose meta record vanished (Redis restarted).

    >>> import rtml, tempfile
    >>> pub = rtml.RedisPublisher("redis://127.0.0.1:6379/0", publish_every="100ms")  # doctest: +SKIP
    >>> runner = rtml.Runner(fs, source, tempfile.mkdtemp(), publish=pub)            # doctest: +SKIP
    """

    def __init__(
        self,
        url: Optional[str] = None,
        *,
        prefix: str = "rtml",
        publish_every: Any = "100ms",
        batch: int = 2000,
        timeout: float = 2.0,
        client: Any = None,
        deltas: bool = True,
    ) -> None:
        if client is None and url is None:
            raise SpecError("RedisPublisher: give url= or client=")
        self.deltas = bool(deltas)
        self.url = url
        self.prefix = prefix
        self.publish_every = _duration_s(publish_every, "RedisPublisher.publish_every")
        self.batch = int(batch)
        if self.batch < 1:
            raise SpecError("RedisPublisher.batch: must be at least 1")
        self.timeout = float(timeout)
        # the Rust client for redis:// URLs (pipelines encoded and sent without the GIL);
        # redis-py for a given client= or other schemes
        self._conn = _rust_conn(url, self.timeout) if client is None and url else None
        self._client = client
        if self._conn is None and client is None:
            self._client = _client(url or "", self.timeout)
        self.ns: Optional[str] = None
        self.spec_id = 0
        self._ttl_ns: Optional[int] = None
        self._full: dict[int, bool] = {}
        self._seen: set[int] = set()
        self.errors = 0
        self.last_error: Optional[str] = None
        self.published_values = 0
        self.published_deltas = 0
        self.rewrites = 0
        self.published_bytes = 0
        self.publishes = 0
        self.seconds = 0.0

    def bind(self, feature_set: Any) -> None:
        """Bind to a feature set (the runner does it): its namespace, spec id and ttl."""
        from .sources import _duration_ns

        self.ns, self.spec_id = namespace_of(feature_set, self.prefix)
        ttl = json.loads(_spec_of(feature_set).to_json()).get("ttl")
        self._ttl_ns = None if ttl is None else _duration_ns(ttl, "ttl")

    def attach(self, partition: int, engine: Any) -> None:
        """Start tracking `engine`'s changed keys; its first publish writes every key."""
        _core.track_changes(engine._engine, True)
        self._full[partition] = True

    @property
    def meta_key(self) -> str:
        return f"{self.ns}:meta"

    @property
    def info_key(self) -> str:
        return f"{self.ns}:info"

    def publish(self, partition: int, engine: Any, position: Any = None) -> int:
        """Write every key of `engine` changed since its last publish (every key after a failure,
        or after a publish that found Redis had lost the partition's meta record), then the
        partition's meta record. Returns the values written. Raises `RemoteUnavailableError`
        (the next call is full)."""
        if self.ns is None:
            raise SpecError("RedisPublisher: not bound to a feature set (give it to a Runner)")
        field = f"p{partition}"
        t0 = time.perf_counter()
        try:
            if self._conn is not None:
                return self._publish_rust(partition, engine, position, field)
            return self._publish_py(partition, engine, position, field)
        finally:
            self.seconds += time.perf_counter() - t0

    def _publish_py(self, partition: int, engine: Any, position: Any, field: str) -> int:
        c = self._client
        assert self.ns is not None
        try:
            full = self._full.get(partition, True)
            if not full and partition in self._seen and not c.hexists(self.meta_key, field):
                full = True  # Redis restarted (or the record was deleted): write everything
            wm, settled, keys, nbytes, key_is_int, items, key_kind = _core.publish_changes(
                engine._engine, self.ns, self.spec_id, full
            )
            # a failure from here on loses the changed set taken above: the next call is full
            self._full[partition] = True
            now_ms = time.time_ns() // 1_000_000
            ttl = self._ttl_ns
            pipe = c.pipeline(transaction=False)
            n = 0
            for name, value, last_ts in items:
                if ttl is None or wm is None:
                    pipe.set(name, value)
                else:
                    at_ms = now_ms + (last_ts + ttl - wm) // 1_000_000
                    if at_ms <= now_ms:
                        pipe.delete(name)
                    else:
                        pipe.set(name, value, pxat=at_ms)
                n += 1
                if n % self.batch == 0:
                    pipe.execute()
            record = {
                "watermark": wm,
                "settle_point": settled,
                "keys": keys,
                "key_is_int": key_is_int,
                "key_kind": key_kind,
                "position": position,
                "published_at_ms": now_ms,
                "keystate_version": KEYSTATE_VERSION,
            }
            pipe.hset(self.meta_key, field, json.dumps(record))
            zone = engine._engine.time_zone_kind
            info = {"key_is_int": key_is_int, "key_kind": key_kind, "zone": zone}
            pipe.set(self.info_key, json.dumps(info))
            pipe.execute()
        except _redis_errors() as e:
            self.errors += 1
            self.last_error = f"{type(e).__name__}: {e}"
            raise RemoteUnavailableError(
                f"publishing partition {partition} to {self._where()}: {self.last_error}"
            ) from None
        self._full[partition] = False
        self._seen.add(partition)
        self.published_values += len(items)
        self.published_bytes += nbytes
        self.publishes += 1
        return len(items)

    def _publish_rust(self, partition: int, engine: Any, position: Any, field: str) -> int:
        assert self._conn is not None and self.ns is not None
        full = self._full.get(partition, True)
        self._full[partition] = True  # until this publish has landed
        total = 0
        # one pass, one round trip (up to `batch` keys); a second, writing every key, when the
        # first found that Redis had lost the partition's meta record (restarted empty)
        for check in (partition in self._seen and not full, False):
            try:
                values, nbytes, meta_lost, deltas, rewrites = _core.publish_redis(
                    self._conn,
                    engine._engine,
                    self.ns,
                    self.spec_id,
                    field,
                    json.dumps(position),
                    time.time_ns() // 1_000_000,
                    self._ttl_ns,
                    full or not check,
                    check,
                    self.batch,
                    self.deltas,
                )
            except _core.RedisIoError as e:
                self.errors += 1
                self.last_error = str(e)
                raise RemoteUnavailableError(
                    f"publishing partition {partition} to {self._where()}: {e}"
                ) from None
            self.published_values += values
            self.published_deltas += deltas
            self.rewrites += rewrites
            self.published_bytes += nbytes
            total += values
            if not meta_lost:
                break
        self._full[partition] = False
        self._seen.add(partition)
        self.publishes += 1
        return total

    def _where(self) -> str:
        return f"redis {self.url}" if self.url else "redis"

    def metrics(self) -> dict[str, Any]:
        return {
            "publishes": self.publishes,
            "values": self.published_values,
            "deltas": self.published_deltas,
            "rewrites": self.rewrites,
            "bytes": self.published_bytes,
            "errors": self.errors,
            "last_error": self.last_error,
            "seconds": round(self.seconds, 3),
        }


class RemoteEngine:
    """Reads the shared state a `RedisPublisher` writes, with `OnlineEngine`'s read API.

    `feature_set`: the FeatureSet the writers compute (its spec hash picks the namespace).
    `url`: ``redis://[user:password@]host:port/db``, served by rtml's Rust client (one call =
    round trip + decode + evaluation, the GIL released while waiting); or `client=`: a redis-py
    client (``rediss://`` TLS, a ``redis.cluster.RedisCluster`` whose ``mget_nonatomic`` splits
    a batch by slot, ...).
    `timeout`: seconds for connecting and for each reply (default 50 ms): past it, or when Redis
    refuses the connection, calls raise `rtml.RemoteUnavailableError`, never a stale or partial
    answer. `fallback`: an object with the same read API (e.g. an `OnlineEngine` the replica
    keeps, or a callable-backed stub) answering instead when Redis is unavailable (opt-in).

    Every read can report the watermark of the state it used (``with_watermark=True``): the
    writing partition's watermark when that key's value was published, None for a key without a
    stored value. A key without a stored value answers like an unknown key of `OnlineEngine`
    (the empty-history values); an `at` the stored state cannot answer exactly raises the same
    `rtml.QueryError`; a value that does not decode raises `rtml.KeyStateError` naming the key.

    Keys are given as to `OnlineEngine`: an int or str, or for a composite entity
    (``entity=["driver_id", "zone"]``) a tuple with one int or str per key column; the store's
    key names come from the engine's encoding of the tuple (src/key.rs), the one the writers'
    engines hold, and `get_many` returns one column per key column.
    """

    def __init__(
        self,
        feature_set: Union["FeatureSet", str],
        url: Optional[str] = None,
        *,
        prefix: str = "rtml",
        timeout: float = 0.05,
        client: Any = None,
        fallback: Any = None,
    ) -> None:
        if client is None and url is None:
            raise SpecError("RemoteEngine: give url= or client=")
        spec = _spec_of(feature_set)
        self.ns, self.spec_id = namespace_of(spec, prefix)
        self.url = url
        self.timeout = float(timeout)
        self._reader = _core.RemoteReader(spec, self.ns, self.spec_id)
        # the Rust client for redis:// URLs (round trip, decode and evaluation in one call);
        # redis-py for a given client= (e.g. a RedisCluster) or other schemes
        self._conn = _rust_conn(url, self.timeout) if client is None and url else None
        self._client = client
        if self._conn is None and client is None:
            self._client = _client(url or "", self.timeout)
        self._mget: Any = None
        if self._client is not None:
            self._mget = getattr(self._client, "mget_nonatomic", None) or self._client.mget
        self._info_key = f"{self.ns}:info".encode()
        self._info_known = False
        self._spec = spec
        self.fallback = fallback
        self._errors = _redis_errors()

    # ---- network -----------------------------------------------------------------------

    def _unavailable(self, e: BaseException) -> RemoteUnavailableError:
        where = f"redis {self.url}" if self.url else "redis"
        return RemoteUnavailableError(
            f"{where} unavailable (timeout {self.timeout}s): {type(e).__name__}: {e}"
        )

    def _learn(self, raw: Optional[bytes]) -> None:
        if raw is None:
            return
        try:
            info = json.loads(raw)
            self._reader.set_info(info.get("key_is_int"), info.get("zone"), info.get("key_kind"))
            self._info_known = info.get("key_is_int") is not None
        except (ValueError, AttributeError, TypeError):
            raise KeyStateError(f"{self._info_key.decode()}: not an rtml info record") from None

    def _fetch(self, names: list[bytes]) -> list[Optional[bytes]]:
        """The values of `names` in one round trip (with the info record until it is known)."""
        try:
            if self._info_known:
                if len(names) == 1:
                    return [self._client.get(names[0])]
                return list(self._mget(names))
            got = list(self._mget([self._info_key, *names]))
        except self._errors as e:
            raise self._unavailable(e) from None
        self._learn(got[0])
        return got[1:]

    # ---- reads -------------------------------------------------------------------------

    def get(self, key: Key, at: Optional[Instant] = None, *, with_watermark: bool = False) -> Any:
        """All features of one entity at `at` (default: now) as a dict, like
        `OnlineEngine.get`; with ``with_watermark=True``, ``(dict, watermark ns or None)``."""
        try:
            if self._conn is not None:
                row, wm = self._reader.fetch_get(self._conn, key, at)
            else:
                name, t, z = self._reader.prepare(key, at)
                (value,) = self._fetch([name])
                row, wm = self._reader.get(key, t, z, value)
        except _core.RedisIoError as e:
            if self.fallback is None:
                raise self._unavailable(e) from None
            row, wm = self.fallback.get(key, at), None
        except RemoteUnavailableError:
            if self.fallback is None:
                raise
            row, wm = self.fallback.get(key, at), None
        except SnapshotError as e:
            raise KeyStateError(str(e)) from None
        return (row, wm) if with_watermark else row

    def get_many(
        self,
        keys: Iterable[Key],
        at: Union[Instant, Sequence[Instant], None] = None,
        *,
        with_watermark: bool = False,
    ) -> Any:
        """Features of many entities as a pyarrow.Table (key column first), one round trip
        (MGET); with ``with_watermark=True``, ``(table, [watermark or None per key])``."""
        keys = list(keys)
        try:
            if self._conn is not None:
                table, wms = self._reader.fetch_get_many(self._conn, keys, at)
            else:
                names, times, zones = self._reader.prepare_many(keys, at)
                values = self._fetch(names) if names else []
                table, wms = self._reader.get_many(keys, times, zones, values)
        except _core.RedisIoError as e:
            if self.fallback is None:
                raise self._unavailable(e) from None
            table, wms = self.fallback.get_many(keys, at), [None] * len(keys)
        except RemoteUnavailableError:
            if self.fallback is None:
                raise
            table, wms = self.fallback.get_many(keys, at), [None] * len(keys)
        except SnapshotError as e:
            raise KeyStateError(str(e)) from None
        return (table, wms) if with_watermark else table

    def vector(
        self,
        key: Key,
        transforms: Union["Transforms", _core.Transforms],
        fields: Optional[dict[str, Any]] = None,
        at: Optional[Instant] = None,
        *,
        with_features: bool = False,
        with_watermark: bool = False,
    ) -> Any:
        """The model-ready float64 vector, like `OnlineEngine.vector`.

        ``with_features=True`` also answers `get` (the features dict) from the same fetched
        value: ``(vector, features)``, one round trip and one decode for both, so the two are
        always of one state (two calls could straddle a publish). ``with_watermark=True``
        appends the value's watermark: ``(vector, watermark)`` or
        ``(vector, features, watermark)``.

        >>> vec, row, wm = remote.vector(42, tf, {"hour": 13}, at=now,  # doctest: +SKIP
        ...                              with_features=True, with_watermark=True)
        """
        core = getattr(transforms, "_t", transforms)
        if not isinstance(core, _core.Transforms):
            raise TypeError(
                f"transforms: expected an rtml.Transforms, got {type(transforms).__name__}"
            )
        feats: Optional[dict[str, Any]]
        try:
            if self._conn is not None:
                vec, feats, wm = self._reader.fetch_vector(
                    self._conn, key, core, fields, at, with_features
                )
            else:
                name, t, z = self._reader.prepare(key, at)
                (value,) = self._fetch([name])
                vec, feats, wm = self._reader.vector(key, t, z, value, core, fields, with_features)
        except (_core.RedisIoError, RemoteUnavailableError) as e:
            if self.fallback is None:
                if isinstance(e, RemoteUnavailableError):
                    raise
                raise self._unavailable(e) from None
            vec = self.fallback.vector(key, transforms, fields, at)
            feats = self.fallback.get(key, at) if with_features else None
            wm = None
        except SnapshotError as e:
            raise KeyStateError(str(e)) from None
        out: np.ndarray[Any, np.dtype[np.float64]] = vec
        if with_features:
            return (out, feats, wm) if with_watermark else (out, feats)
        return (out, wm) if with_watermark else out

    def __contains__(self, key: object) -> bool:
        """Whether the store holds a value for `key`."""
        try:
            if self._conn is not None:
                return bool(self._reader.fetch_exists(self._conn, key))
            name = self._reader.store_key(key)
            return bool(self._client.exists(name))
        except _core.RedisIoError as e:
            raise self._unavailable(e) from None
        except self._errors as e:
            raise self._unavailable(e) from None

    def stats(self) -> dict[str, Any]:
        """What the writers last published: ``partitions`` (per partition: ``watermark``,
        ``settle_point``, ``keys``, ``position``, ``published_at_ms``), ``keys`` (sum),
        ``watermark`` (the smallest partition watermark: every partition has published at
        least up to it), ``watermark_iso``, ``namespace``."""
        try:
            if self._conn is not None:
                flat = self._conn.command("HGETALL", f"{self.ns}:meta")
                raw = dict(zip(flat[::2], flat[1::2]))
            else:
                raw = self._client.hgetall(f"{self.ns}:meta")
        except _core.RedisIoError as e:
            raise self._unavailable(e) from None
        except self._errors as e:
            raise self._unavailable(e) from None
        parts = {}
        for k, v in raw.items():
            k = k.decode() if isinstance(k, bytes) else k
            try:
                parts[int(k[1:])] = json.loads(v)
            except (ValueError, TypeError):
                raise KeyStateError(f"{self.ns}:meta field {k!r}: not a partition record") from None
        wms = [p["watermark"] for p in parts.values() if p.get("watermark") is not None]
        wm = min(wms) if wms else None
        return {
            "namespace": self.ns,
            "partitions": dict(sorted(parts.items())),
            "keys": sum(int(p.get("keys") or 0) for p in parts.values()),
            "watermark": wm,
            "watermark_iso": iso_ns(wm),
        }

    @property
    def feature_names(self) -> list[str]:
        names: list[str] = self._reader.feature_names
        return names

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        try:
            if self._client is not None:
                self._client.close()
        except Exception:  # closing a broken connection is best effort
            pass

    def __repr__(self) -> str:
        return f"RemoteEngine(namespace={self.ns!r}, url={self.url!r}, timeout={self.timeout})"
