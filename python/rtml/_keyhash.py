"""A stable 64-bit hash of entity keys, vectorised with NumPy, for partitioning by entity.

The out-of-core backfill (``rtml.outofcore``) sends every row of one entity to one spill
partition by ``hash(key) % n``. Only two things matter for correctness: the hash of a key is a
pure function of its value (so the events and the spine of an entity meet in the same
partition), and an integer key hashes the same whatever its width (the engine widens every
integer key to int64, so an int32 spine key must meet int64 events). Collisions only put two
entities in one partition, which changes nothing in the answer. The quality of the hash matters
only for balance.

* integer keys: cast to int64, then the splitmix64 finaliser;
* string keys (utf8, large_utf8, string_view, dictionary of strings): a position-weighted sum
  of the UTF-8 bytes (each byte + 1 times a fixed pseudo-random weight per position), mixed with
  the length, then the splitmix64 finaliser.

``seed`` gives independent hashes for re-splitting an oversized partition. The values are stable
across processes, platforms and versions of NumPy / pyarrow (pure integer arithmetic, wrapping
at 2^64); they are not the same as Spark's ``xxhash64`` (``rtml.spark`` uses Spark's own).

>>> import pyarrow as pa
>>> from rtml._keyhash import partition_of
>>> partition_of(pa.array([1, 2, 1], pa.int64()), 4).tolist() == partition_of(
...     pa.array([1, 2, 1], pa.int32()), 4).tolist()
True
>>> p = partition_of(pa.array(["a", "bb", "a"]), 8)
>>> int(p[0]) == int(p[2])
True
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["hash_keys", "partition_of", "is_string_key", "entity_keys", "encode_key"]

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)
_weights_cache: list[Any] = [np.zeros(0, dtype=np.uint64)]


def _mix(x: Any) -> Any:
    """splitmix64's finaliser on a uint64 array (wrapping arithmetic; returns a new array)."""
    x = x ^ (x >> _S30)
    x = x * _M1
    x = x ^ (x >> _S27)
    x = x * _M2
    return x ^ (x >> _S31)


def _weights(n: int) -> Any:
    """Per-position byte weights (at least n of them): splitmix64 of 1, 2, 3, ..."""
    w = _weights_cache[0]
    if len(w) < n:
        size = max(n, 2 * len(w), 64)
        w = _mix(np.arange(1, size + 1, dtype=np.uint64) * _GOLDEN)
        _weights_cache[0] = w
    return w


def is_string_key(typ: pa.DataType) -> bool:
    """Whether an Arrow key type is one of the string kinds the engine accepts."""
    if pa.types.is_dictionary(typ):
        typ = typ.value_type
    return bool(
        pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ)
    )


def hash_keys(keys: pa.Array | pa.ChunkedArray, seed: int = 0) -> Any:
    """uint64 hash of every key (a NumPy array as long as `keys`). Null keys hash like 0 / ""
    (callers reject them before: the engine refuses null keys)."""
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks() if keys.num_chunks != 1 else keys.chunk(0)
    typ = keys.type
    s = _mix(np.array([seed], dtype=np.uint64) + _GOLDEN)[0]
    if is_string_key(typ):
        arr = pc.cast(keys, pa.large_string())
        if isinstance(arr, pa.ChunkedArray):  # pragma: no cover (cast of an Array is an Array)
            arr = arr.combine_chunks()
        n = len(arr)
        bufs = arr.buffers()
        offsets = np.frombuffer(bufs[1], dtype=np.int64)[arr.offset : arr.offset + n + 1]
        start = offsets[:-1]
        lengths = (offsets[1:] - start).astype(np.int64)
        lo = int(offsets[0]) if n else 0
        hi = int(offsets[-1]) if n else 0
        data = (
            np.frombuffer(bufs[2], dtype=np.uint8)[lo:hi]
            if bufs[2] is not None
            else np.zeros(0, dtype=np.uint8)
        )
        rel = start - lo
        pos = np.arange(hi - lo, dtype=np.int64) - np.repeat(rel, lengths)
        w = _weights(int(lengths.max()) if n else 0)
        terms = (data.astype(np.uint64) + np.uint64(1)) * w[pos]
        csum = np.zeros(len(terms) + 1, dtype=np.uint64)
        np.cumsum(terms, dtype=np.uint64, out=csum[1:])
        h = csum[rel + lengths] - csum[rel]
        h = h ^ (lengths.astype(np.uint64) * _GOLDEN)
    elif pa.types.is_integer(typ):
        ints = pc.cast(keys, pa.int64()).fill_null(0)
        h = ints.to_numpy(zero_copy_only=False).view(np.uint64)
    else:
        raise TypeError(f"keys must be integers or strings, got {typ}")
    return _mix(h ^ s)


def partition_of(keys: pa.Array | pa.ChunkedArray, n: int, seed: int = 0) -> Any:
    """The partition (0 .. n-1, a NumPy int64 array) of every key."""
    if n <= 1:
        return np.zeros(len(keys), dtype=np.int64)
    return (hash_keys(keys, seed) % np.uint64(n)).astype(np.int64)


def entity_keys(table: pa.Table | pa.RecordBatch, columns: list[str]) -> pa.Array | pa.ChunkedArray:
    """The entity key of every row of `table` as the engine holds it: the key column itself for
    a single key, or for a composite key (several `columns`) the engine's encoding of the parts
    (``rtml._core.encode_keys``, the one encoder in src/key.rs; null where a part is null).
    Equal tuples give equal keys, so hashing these puts all rows of a composite key in one
    partition.

    >>> import pyarrow as pa
    >>> t = pa.table({"d": ["d7", "d7"], "z": [3, 4]})
    >>> entity_keys(t, ["d", "z"]).to_pylist()
    ['s2:d7i3;', 's2:d7i4;']
    """
    if len(columns) == 1:
        return table.column(columns[0])
    from . import _core

    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    out: pa.Array = _core.encode_keys(table, columns).column(0)
    return out


def encode_key(parts: Any) -> str:
    """The engine's encoding of one composite key given as a tuple (or list) of int / str parts
    (``rtml._core.encode_keys`` on a one-row table: the one encoder in src/key.rs).

    >>> encode_key(("d7", 3))
    's2:d7i3;'
    """
    cols = {}
    for j, v in enumerate(parts):
        if isinstance(v, bool) or not isinstance(v, (int, str, np.integer)):
            raise TypeError(
                f"a composite key part is an int or a str, got {type(v).__name__} at part {j}"
            )
        cols[f"p{j}"] = pa.array([int(v) if isinstance(v, np.integer) else v])
    out = entity_keys(pa.table(cols), list(cols)).to_pylist()
    return str(out[0])
