"""Per-sample encodings of a teacher's top-k next-token distribution.

One sample is ``P`` positions x ``k`` candidates: ``topk_ids`` (int64, distinct per row, in ``[0, vocab_size)``) and
``topk_logprobs`` (float32, finite, ``<= 0``, descending per row, temperature 1). An :class:`Encoding` turns that into
one ``bytes`` blob and back. Two are provided:

``lossless-v1``
    Bit-exact. A 20-byte header (magic ``TKL1``, ``P``, ``k``, ``vocab_size``, CRC-32 of the payload; uint32
    little-endian), then the ids as int32 and the log-probs as float32, little-endian, row-major: ``20 + 8 * P * k``
    bytes. Decoding is a CRC and two ``np.frombuffer`` views (~0.3 ms for 1024 x 64).

``compact-v1`` (the default)
    On SmolLM2-135M-Instruct over real English text (``benchmarks/cache_encoding.py``): 125 bytes per position at
    ``k = 64`` (4.1x smaller than lossless; 39 at ``k = 16``, 232 at ``k = 128``), mean KL(exact || decoded) 1.1e-5
    nats per position and 3.3e-5 at worst, tail included (see below). The magic ``TKC1``, then one zlib stream, whose
    Adler-32 guards everything, of:

    * header: ``P``, ``k``, ``vocab_size``, ``U`` (uint32);
    * the ``U`` distinct ids of the whole sample, ascending, as gaps ``u[j] - u[j-1] - 1`` in byte planes (as many
      planes as ``vocab_size - 1`` needs: 2 up to 65536, 3 above, e.g. Qwen's 151936), least significant first;
    * each row's ids as ascending indices into that table, as gaps (byte planes, as many as ``U - 1`` needs). A
      teacher's top-k sets share most of their ids across a sample, so this beats per-row gaps of raw ids by ~15%;
    * each row's log-probs in that same ascending-id order, one byte each: with ``d = lp_1 - lp >= 0`` the distance
      below the row's top log-prob, ``code = round(255 * log1p(d / 2) / a)`` and ``a = log1p(span / 2)`` (float16,
      rounded up). The step thus grows as ``(2 + d) * a / 255``: ~0.02 nats near the top-1 for a 20-nat span, ~0.2
      nats 20 nats below it, where probabilities are ~1e-9 of the top. Against a uniform step this keeps the mean KL,
      cuts the worst row's KL 6x and the bytes by 3%;
    * per row, ``a`` (float16) and ``log_mass = logsumexp(topk_logprobs)`` (float32): the probability the top-k
      hold, so ``1 - exp(log_mass)`` is the tail mass outside them.

    Decoding rebuilds ``lp = -2 * expm1(code * a / 255) + (log_mass - logsumexp(row))``: the codes give the shape and
    the offset puts the top-k mass, hence the tail, back where the teacher had it. That offset is what keeps the KL
    low for peaked rows (a top-1 at probability 1 - 1e-6 comes back with its tail) and makes the top-1 of every row
    the offset itself. It is rounded so the decoded mass never exceeds the exact one (short by ~1e-6 at most): a tail
    the teacher left open stays open. Rows come back sorted by descending log-prob (equal codes: ascending id). About
    4 ms for 1024 x 64 on one shared core.

The KL that bounds ``compact-v1`` is over the top-k support plus one tail bucket holding ``1 - sum(exp(logprobs))``
(clamped at 0), computed the same way for the exact and the decoded rows, so it charges both the values and the
tail. ``benchmarks/cache_encoding.py`` measures size, KL and speed on a real teacher.

Every decode checks what it reads (magic, sizes, checksum, id range, table consistency) and raises
:class:`CacheCorruptionError` rather than returning anything from a malformed, truncated or mismatched blob.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

__all__ = [
    "DEFAULT_ENCODING",
    "ENCODINGS",
    "CacheCorruptionError",
    "CompactEncoding",
    "Encoding",
    "LosslessEncoding",
    "get_encoding",
]

MAX_VOCAB_SIZE = 2**31 - 1  # ids travel as int32 in lossless-v1
# log_softmax in float32 never exceeds 0, but log-probs from elsewhere may carry a rounding error above it.
_MAX_POSITIVE_LOGPROB = 1e-5
_MAX_LOG_MASS = 1e-4  # a top-k holding more than probability 1 + 1e-4 is not a distribution's top-k
_DENSE_TABLE_MAX_VOCAB = 1 << 22


class CacheCorruptionError(ValueError):
    """A blob cannot be decoded: malformed, truncated, corrupted, or decoded with the wrong shape or vocabulary."""


class Encoding:
    """Encodes one sample's top-k ids and log-probs ``[P, k]`` into bytes, and decodes them back.

    ``name`` is what a cache records in its metadata; :func:`get_encoding` maps it back to an instance.
    """

    name: str = ""

    def encode(self, topk_ids: np.ndarray, topk_logprobs: np.ndarray, vocab_size: int) -> bytes:
        """``topk_ids`` int [P, k] and ``topk_logprobs`` float [P, k] (rows sorted by descending log-prob) -> blob."""
        raise NotImplementedError

    def decode(self, blob, num_positions: int, k: int, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Blob (bytes, memoryview or 1-D uint8 array) -> ``(ids int64 [P, k], logprobs float32 [P, k])``, each row
        sorted by descending log-prob. Raises :class:`CacheCorruptionError` if the blob does not decode to that shape.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


# ----------------------------------------------------------------------------------------------------- helpers


def _check_vocab_size(vocab_size) -> int:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int | np.integer):
        raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
    vocab_size = int(vocab_size)
    if not 1 <= vocab_size <= MAX_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be in [1, {MAX_VOCAB_SIZE}], got {vocab_size}")
    return vocab_size


def _check_inputs(topk_ids, topk_logprobs, vocab_size) -> tuple[np.ndarray, np.ndarray, int]:
    """Validates what an encoder is given; returns ``(ids int64, logprobs float32, vocab_size)``, both C-contiguous."""
    vocab_size = _check_vocab_size(vocab_size)
    ids = np.asarray(topk_ids)
    lp = np.asarray(topk_logprobs)
    if ids.ndim != 2 or lp.ndim != 2 or ids.shape != lp.shape:
        raise ValueError(
            f"topk_ids and topk_logprobs must both be [num_positions, k]; got shapes {ids.shape} and {lp.shape}"
        )
    if ids.shape[1] < 1:
        raise ValueError("k must be at least 1")
    if ids.dtype.kind not in "iu":
        raise TypeError(f"topk_ids must be integers, got dtype {ids.dtype}")
    if lp.dtype.kind != "f":
        raise TypeError(f"topk_logprobs must be floating point, got dtype {lp.dtype}")
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    lp = np.ascontiguousarray(lp, dtype=np.float32)
    if ids.size:
        if int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
            raise ValueError(f"topk_ids must lie in [0, {vocab_size}); got [{int(ids.min())}, {int(ids.max())}]")
        if not np.isfinite(lp).all():
            raise ValueError("topk_logprobs must be finite (no NaN or inf)")
        if float(lp.max()) > _MAX_POSITIVE_LOGPROB:
            raise ValueError(f"topk_logprobs must be <= 0 (log-probabilities); got a maximum of {float(lp.max())}")
        if (np.diff(lp, axis=1) > 0).any():
            raise ValueError("each row of topk_logprobs must be sorted by descending log-prob")
        mass = _log_mass(lp)
        if float(mass.max()) > _MAX_LOG_MASS:
            row = int(mass.argmax())
            raise ValueError(
                f"row {row} of topk_logprobs holds a probability mass of {float(np.exp(mass[row])):.6g} > 1: pass "
                "log-probabilities (log_softmax at temperature 1), not logits"
            )
    return ids, lp, vocab_size


def _log_mass(lp: np.ndarray) -> np.ndarray:
    """Per row, log(sum(exp(lp))) in float64, stable for any magnitude (rows sorted descending: lp[:, 0] is max)."""
    top = lp[:, :1].astype(np.float64)
    return top[:, 0] + np.log(np.exp(lp - top).sum(axis=1))


def _check_distinct(sorted_ids: np.ndarray) -> None:
    if sorted_ids.shape[1] > 1 and (np.diff(sorted_ids, axis=1) == 0).any():
        row = int(np.flatnonzero((np.diff(sorted_ids, axis=1) == 0).any(axis=1))[0])
        raise ValueError(f"topk_ids must be distinct within each row; row {row} repeats an id")


def _as_buffer(blob) -> memoryview:
    """bytes / bytearray / memoryview / 1-D uint8 array -> a flat byte memoryview (no copy when possible)."""
    if isinstance(blob, np.ndarray):
        if blob.dtype != np.uint8 or blob.ndim != 1:
            raise TypeError(f"a blob array must be 1-D uint8, got {blob.dtype} with shape {blob.shape}")
        blob = np.ascontiguousarray(blob)
    try:
        view = memoryview(blob)
    except TypeError:
        what = type(blob).__name__
        raise TypeError(f"a blob must be bytes, a memoryview or a 1-D uint8 array, got {what}") from None
    if view.ndim != 1 or view.itemsize != 1 or not view.c_contiguous:
        view = memoryview(view.tobytes())
    return view.cast("B") if view.format != "B" else view


def _check_shape_args(num_positions, k) -> tuple[int, int]:
    num_positions, k = int(num_positions), int(k)
    if num_positions < 0 or k < 1:
        raise ValueError(f"num_positions must be >= 0 and k >= 1, got {num_positions} and {k}")
    return num_positions, k


def _check_magic(name: str, magic: bytes, expected: bytes) -> None:
    if magic != expected:
        raise CacheCorruptionError(
            f"not a {name} blob: it starts with {magic!r}, not {expected!r} (a cache written with another encoding, "
            "or corrupted bytes)"
        )


def _check_header(name: str, stored: tuple, expected: tuple) -> None:
    """``stored`` / ``expected``: ``(num_positions, k, vocab_size)`` from the blob / from the caller."""
    (p, k, vocab), (num_positions, top_k, vocab_size) = stored, expected
    if (p, k) != (num_positions, top_k):
        raise CacheCorruptionError(
            f"{name} blob holds {p} positions x top-{k}, but {num_positions} x top-{top_k} were expected"
        )
    if vocab != vocab_size:
        raise CacheCorruptionError(f"{name} blob was written for a vocabulary of {vocab}, not {vocab_size}")


def _width(max_value: int) -> int:
    """Bytes per value in a byte-plane array holding values up to ``max_value``."""
    return 1 if max_value < 1 << 8 else 2 if max_value < 1 << 16 else 3 if max_value < 1 << 24 else 4


def _to_planes(values: np.ndarray, width: int) -> bytes:
    """Non-negative ints (< 2**(8 * width)) -> ``width`` byte planes, least significant first."""
    le = np.ascontiguousarray(values.reshape(-1), dtype="<u4").view(np.uint8).reshape(-1, 4)
    return le[:, :width].T.tobytes()


def _from_planes(buf: np.ndarray, width: int, count: int) -> np.ndarray:
    """Inverse of :func:`_to_planes`: ``width * count`` bytes -> int64 [count]."""
    planes = buf.reshape(width, count)
    out = planes[0].astype(np.int64)
    for j in range(1, width):
        out |= planes[j].astype(np.int64) << (8 * j)
    return out


# ---------------------------------------------------------------------------------------------------- lossless


class LosslessEncoding(Encoding):
    """Bit-exact: int32 ids then float32 log-probs, little-endian, behind a 20-byte header with a CRC-32."""

    name = "lossless-v1"
    MAGIC = b"TKL1"
    _HEADER = struct.Struct("<4sIIII")  # magic, num_positions, k, vocab_size, crc32 of the payload

    def encode(self, topk_ids, topk_logprobs, vocab_size: int) -> bytes:
        ids, lp, vocab_size = _check_inputs(topk_ids, topk_logprobs, vocab_size)
        _check_distinct(np.sort(ids, axis=1))
        payload = ids.astype("<i4").tobytes() + lp.astype("<f4").tobytes()
        header = self._HEADER.pack(self.MAGIC, ids.shape[0], ids.shape[1], vocab_size, zlib.crc32(payload))
        return header + payload

    def decode(self, blob, num_positions: int, k: int, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
        num_positions, k = _check_shape_args(num_positions, k)
        vocab_size = _check_vocab_size(vocab_size)
        buf = _as_buffer(blob)
        if len(buf) < self._HEADER.size:
            raise CacheCorruptionError(
                f"{self.name} blob is truncated: {len(buf)} bytes, shorter than its {self._HEADER.size}-byte header"
            )
        magic, p, kk, vocab, crc = self._HEADER.unpack_from(buf)
        _check_magic(self.name, bytes(magic), self.MAGIC)
        _check_header(self.name, (p, kk, vocab), (num_positions, k, vocab_size))
        size = num_positions * k
        expected = self._HEADER.size + 8 * size
        if len(buf) != expected:
            raise CacheCorruptionError(
                f"{self.name} blob for {num_positions} x top-{k} must be {expected} bytes, got {len(buf)} (truncated "
                "or padded)"
            )
        payload = buf[self._HEADER.size :]
        if zlib.crc32(payload) != crc:
            raise CacheCorruptionError(f"{self.name} blob fails its CRC-32 check: the bytes are corrupted")
        raw = np.frombuffer(payload, dtype=np.uint8)
        ids = raw[: 4 * size].view("<i4").astype(np.int64).reshape(num_positions, k)
        lp = raw[4 * size :].view("<f4").astype(np.float32).reshape(num_positions, k)
        if size and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
            raise CacheCorruptionError(
                f"{self.name} blob has ids outside [0, {vocab_size}) (range [{int(ids.min())}, {int(ids.max())}])"
            )
        return ids, lp


# ----------------------------------------------------------------------------------------------------- compact


class CompactEncoding(Encoding):
    """Sample-wide id table + per-row index gaps, 8-bit companded log-probs, exact top-k mass, one zlib stream.

    ``level`` is zlib's compression level (1-9): 6 is within 1% of 9 on teacher data and faster to encode.
    """

    name = "compact-v1"
    MAGIC = b"TKC1"
    LEVELS = 255  # codes 0..255: one byte per log-prob
    KNEE = 2.0  # nats: the step grows with the distance d below the top-1 as (KNEE + d)
    _HEADER = struct.Struct("<IIII")  # num_positions, k, vocab_size, size of the id table

    def __init__(self, level: int = 6):
        if not 1 <= int(level) <= 9:
            raise ValueError(f"zlib level must be in [1, 9], got {level}")
        self.level = int(level)

    def encode(self, topk_ids, topk_logprobs, vocab_size: int) -> bytes:
        ids, lp, vocab_size = _check_inputs(topk_ids, topk_logprobs, vocab_size)
        num_positions, k = ids.shape
        lp = np.minimum(lp, np.float32(0)).astype(np.float64)

        # Per row: distances below the top-1, d = lp_1 - lp >= 0, companded as u = log1p(d / KNEE) / a with
        # a = log1p(span / KNEE) (float16, rounded up so u <= 1), and quantized to code = round(255 u).
        gap = lp[:, :1] - lp
        scale = np.log1p(gap[:, -1] / self.KNEE).astype(np.float16)
        short = scale.astype(np.float64) < np.log1p(gap[:, -1] / self.KNEE)
        scale[short] = np.nextafter(scale[short], np.float16(np.inf))
        scale64 = scale.astype(np.float64)[:, None]
        with np.errstate(divide="ignore", invalid="ignore"):
            codes = np.where(scale64 > 0, np.rint(np.log1p(gap / self.KNEE) / scale64 * self.LEVELS), 0.0)
        codes = np.clip(codes, 0, self.LEVELS).astype(np.uint8)
        # log of the top-k mass; a rounding excess above 0 (probability above 1) is clamped.
        log_mass = _log_mass(lp).clip(max=0.0).astype("<f4")

        # Ascending ids per row, codes in that order; the sample-wide table of distinct ids, rows as indices into it.
        order = np.argsort(ids, axis=1)
        sorted_ids = np.take_along_axis(ids, order, axis=1)
        _check_distinct(sorted_ids)
        codes = np.take_along_axis(codes, order, axis=1)
        if vocab_size <= _DENSE_TABLE_MAX_VOCAB:  # O(vocab + P k) with a presence map, else sort-based
            present = np.zeros(vocab_size, dtype=bool)
            present[sorted_ids.reshape(-1)] = True
            table = np.flatnonzero(present)
            index = (np.cumsum(present, dtype=np.int64) - 1)[sorted_ids]
        else:
            table = np.unique(sorted_ids)
            index = np.searchsorted(table, sorted_ids)
        table_gaps = np.diff(table, prepend=-1) - 1
        index_gaps = np.diff(index, axis=1, prepend=-1) - 1

        payload = b"".join(
            (
                self._HEADER.pack(num_positions, k, vocab_size, table.size),
                _to_planes(table_gaps, _width(vocab_size - 1)),
                _to_planes(index_gaps, _width(max(table.size - 1, 0))),
                codes.tobytes(),
                _to_planes(scale.view("<u2"), 2),
                _to_planes(log_mass.view("<u4"), 4),
            )
        )
        return self.MAGIC + zlib.compress(payload, self.level)

    def decode(self, blob, num_positions: int, k: int, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
        num_positions, k = _check_shape_args(num_positions, k)
        vocab_size = _check_vocab_size(vocab_size)
        buf = _as_buffer(blob)
        if len(buf) < len(self.MAGIC) + 8:  # the shortest zlib stream is 8 bytes
            raise CacheCorruptionError(f"{self.name} blob is truncated: {len(buf)} bytes")
        _check_magic(self.name, bytes(buf[:4]), self.MAGIC)
        inflater = zlib.decompressobj()
        try:
            head = inflater.decompress(buf[4:], self._HEADER.size)
            if len(head) < self._HEADER.size:
                raise CacheCorruptionError(f"{self.name} blob is truncated before the end of its header")
            p, kk, vocab, table_size = self._HEADER.unpack(head)
            _check_header(self.name, (p, kk, vocab), (num_positions, k, vocab_size))
            size = num_positions * k
            if table_size > min(size, vocab_size) or (size > 0 and table_size < k):
                raise CacheCorruptionError(
                    f"{self.name} blob has an id table of {table_size} entries, impossible for {num_positions} x "
                    f"top-{k} over a vocabulary of {vocab_size}"
                )
            wv, wi = _width(vocab_size - 1), _width(max(table_size - 1, 0))
            expected = table_size * wv + size * (wi + 1) + 6 * num_positions
            payload = inflater.decompress(inflater.unconsumed_tail, expected + 1)
        except zlib.error as err:
            raise CacheCorruptionError(f"{self.name} blob fails decompression ({err}): corrupted bytes") from None
        if len(payload) > expected or (inflater.eof and len(payload) < expected):
            raise CacheCorruptionError(
                f"{self.name} blob decompresses to {'more than' if len(payload) > expected else len(payload)} bytes "
                f"of data, expected {expected} for {num_positions} x top-{k} with {table_size} distinct ids"
            )
        if not inflater.eof:
            raise CacheCorruptionError(f"{self.name} blob is truncated before the end of its compressed stream")
        if inflater.unused_data:
            raise CacheCorruptionError(
                f"{self.name} blob has {len(inflater.unused_data)} stray bytes after its compressed stream"
            )
        if size == 0:
            return np.zeros((0, k), dtype=np.int64), np.zeros((0, k), dtype=np.float32)

        raw = np.frombuffer(payload, dtype=np.uint8)
        pos = 0
        table = np.cumsum(_from_planes(raw[pos : pos + table_size * wv], wv, table_size) + 1) - 1
        pos += table_size * wv
        index = np.cumsum(_from_planes(raw[pos : pos + size * wi], wi, size).reshape(num_positions, k) + 1, axis=1) - 1
        pos += size * wi
        codes = raw[pos : pos + size].reshape(num_positions, k)
        pos += size
        scale = raw[pos : pos + 2 * num_positions].reshape(2, num_positions).T.copy().view("<f2")[:, 0]
        pos += 2 * num_positions
        log_mass = raw[pos : pos + 4 * num_positions].reshape(4, num_positions).T.copy().view("<f4")[:, 0]

        if int(table[-1]) >= vocab_size:
            raise CacheCorruptionError(
                f"{self.name} blob has ids up to {int(table[-1])}, outside a vocabulary of {vocab_size}"
            )
        if int(index[:, -1].max()) >= table_size:
            raise CacheCorruptionError(f"{self.name} blob indexes past its id table of {table_size} entries")
        if not (np.isfinite(scale).all() and scale.min() >= 0 and np.isfinite(log_mass).all() and log_mass.max() <= 0):
            raise CacheCorruptionError(f"{self.name} blob has invalid per-row scales (non-finite or out of range)")

        # Descending log-prob = ascending code; a stable sort keeps equal codes in ascending id order.
        order = np.argsort(codes, axis=1, kind="stable")
        ids = table[np.take_along_axis(index, order, axis=1)]
        # -KNEE * expm1(code * a / 255), as exp() - 1 (float32 exp is vectorized, expm1 is not; the cancellation
        # costs ~1e-7 nats), made non-increasing along the row whatever the last bit of exp does.
        values = np.exp(np.take_along_axis(codes, order, axis=1) * (scale.astype(np.float32) / self.LEVELS)[:, None])
        values -= np.float32(1)
        np.maximum.accumulate(values, axis=1, out=values)
        values *= np.float32(-self.KNEE)
        # Offset each row by log_mass - logsumexp(row) (row maximum 0 at code 0, so the sum is >= 1), less a margin
        # that covers float32 exp (< 2 ulp; 8 allowed) and the rounding of the additions, with the offset rounded
        # down: the decoded top-k mass never exceeds the exact one (it falls short by ~1e-6 at most), so a tail the
        # teacher left open, even at float32 noise level, stays open and the KL's tail bucket stays finite.
        margin = 2.0**-20 + 2.0**-24 * (np.log(k) + 1)
        offset64 = log_mass.astype(np.float64) - np.log(np.exp(values).sum(axis=1, dtype=np.float64)) - margin
        offset = offset64.astype(np.float32)
        np.nextafter(offset, np.float32(-np.inf), out=offset, where=offset > offset64)
        values += offset[:, None]
        return ids, values


# ---------------------------------------------------------------------------------------------------- registry

ENCODINGS: dict[str, Encoding] = {enc.name: enc for enc in (LosslessEncoding(), CompactEncoding())}
DEFAULT_ENCODING = CompactEncoding.name
_ALIASES = {"lossless": LosslessEncoding.name, "compact": CompactEncoding.name}


def get_encoding(name: str) -> Encoding:
    """The encoding called ``name``: a full name (``lossless-v1``, ``compact-v1``) or an alias (``lossless``,
    ``compact``, meaning the current version). Unknown names raise ``ValueError`` listing the choices."""
    if isinstance(name, Encoding):
        return name
    key = _ALIASES.get(name, name)
    if key not in ENCODINGS:
        choices = ", ".join(sorted([*ENCODINGS, *_ALIASES]))
        raise ValueError(f"Unknown teacher cache encoding {name!r}; choose one of: {choices}")
    return ENCODINGS[key]
