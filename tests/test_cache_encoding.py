"""Per-sample encodings of the teacher cache: lossless round trips, compact accuracy, corruption detection."""

import math

import numpy as np
import pytest

from trl_edge.cache.encoding import (
    DEFAULT_ENCODING,
    ENCODINGS,
    CacheCorruptionError,
    CompactEncoding,
    Encoding,
    LosslessEncoding,
    get_encoding,
)

SMOLLM_VOCAB = 49152
QWEN_VOCAB = 151936
LOSSLESS, COMPACT = ENCODINGS["lossless-v1"], ENCODINGS["compact-v1"]


def teacher_rows(num_positions, k, vocab_size=SMOLLM_VOCAB, seed=0, kind="mixed"):
    """Top-k of realistic next-token distributions: log_softmax (float32) of dense logits over the vocabulary.

    ``gauss``: Gaussian logits with a per-row scale from flat (0.5) to very peaked (12); ``zipf``: logits
    ``-s * log(rank)`` over a random permutation of the vocabulary; ``mixed``: half of each.
    """
    rng = np.random.default_rng(seed)
    if num_positions == 0:
        return np.zeros((0, k), dtype=np.int64), np.zeros((0, k), dtype=np.float32)
    gauss = rng.standard_normal((num_positions, vocab_size), dtype=np.float32)
    gauss *= rng.uniform(0.5, 12.0, (num_positions, 1)).astype(np.float32)
    zipf = -np.log(np.arange(1, vocab_size + 1, dtype=np.float32)) * rng.uniform(0.8, 2.5, (num_positions, 1))
    zipf = rng.permuted(zipf.astype(np.float32), axis=1)
    if kind == "gauss":
        logits = gauss
    elif kind == "zipf":
        logits = zipf
    else:
        logits = np.where((np.arange(num_positions) % 2 == 0)[:, None], gauss, zipf)
    shifted = logits - logits.max(axis=1, keepdims=True)
    logprobs = shifted - np.log(np.exp(shifted.astype(np.float64)).sum(axis=1, keepdims=True)).astype(np.float32)
    top = np.argpartition(-logprobs, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(logprobs, top, axis=1), axis=1, kind="stable")
    ids = np.take_along_axis(top, order, axis=1).astype(np.int64)
    return ids, np.take_along_axis(logprobs, ids, axis=1)


def reference_kl(exact_ids, exact_lp, decoded_ids, decoded_lp):
    """KL(exact || decoded) per row over the top-k ids plus a tail bucket, written out plainly with math.fsum.

    Each side: probabilities exp(logprob) matched by id, tail = max(0, 1 - sum); both normalized to sum 1.
    """
    kls = []
    rows = zip(exact_ids.tolist(), exact_lp.tolist(), decoded_ids.tolist(), decoded_lp.tolist(), strict=True)
    for ids_p, lp_p, ids_q, lp_q in rows:
        p = {i: math.exp(v) for i, v in zip(ids_p, lp_p, strict=True)}
        q = {i: math.exp(v) for i, v in zip(ids_q, lp_q, strict=True)}
        assert p.keys() == q.keys()
        p["tail"] = max(0.0, 1.0 - math.fsum(p.values()))
        q["tail"] = max(0.0, 1.0 - math.fsum(q.values()))
        zp, zq = math.fsum(p.values()), math.fsum(q.values())
        total = []
        for key, pv in p.items():
            if pv > 0:
                qv = q[key] / zq
                total.append(math.inf if qv == 0 else pv / zp * math.log((pv / zp) / qv))
        kls.append(math.fsum(total))
    return np.array(kls)


def by_id(ids, values):
    """Per row, values reordered by ascending id (to compare rows whose equal log-probs may come in any order)."""
    order = np.argsort(ids, axis=1)
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(values, order, axis=1)


# ------------------------------------------------------------------------------------------------ lossless


@pytest.mark.parametrize("num_positions,k", [(0, 64), (1, 1), (37, 16), (50, 64)])
def test_lossless_round_trip_is_bit_exact(num_positions, k):
    ids, lp = teacher_rows(num_positions, k, seed=num_positions)
    blob = LOSSLESS.encode(ids, lp, SMOLLM_VOCAB)
    assert isinstance(blob, bytes) and len(blob) == 20 + 8 * num_positions * k
    out_ids, out_lp = LOSSLESS.decode(blob, num_positions, k, SMOLLM_VOCAB)
    assert out_ids.dtype == np.int64 and out_lp.dtype == np.float32
    assert out_ids.shape == out_lp.shape == (num_positions, k)
    assert np.array_equal(out_ids, ids)
    assert np.array_equal(out_lp.view(np.int32), lp.view(np.int32))  # bit for bit


@pytest.mark.parametrize("encoding", [LOSSLESS, COMPACT], ids=lambda e: e.name)
def test_blob_types_and_writable_outputs(encoding):
    ids, lp = teacher_rows(9, 8)
    blob = encoding.encode(ids, lp, SMOLLM_VOCAB)
    reference = encoding.decode(blob, 9, 8, SMOLLM_VOCAB)
    padded = np.frombuffer(b"xx" + blob, dtype=np.uint8)[2:]  # a view at an odd offset, as a shard slice may be
    for view in (memoryview(blob), bytearray(blob), np.frombuffer(blob, dtype=np.uint8), padded):
        out_ids, out_lp = encoding.decode(view, 9, 8, SMOLLM_VOCAB)
        assert np.array_equal(out_ids, reference[0]) and np.array_equal(out_lp, reference[1])
        assert out_ids.flags.writeable and out_lp.flags.writeable
    assert encoding.encode(ids, lp, SMOLLM_VOCAB) == blob  # deterministic


# ------------------------------------------------------------------------------------------------- compact


@pytest.mark.parametrize("kind", ["gauss", "zipf"])
@pytest.mark.parametrize("k", [16, 64])
def test_compact_round_trip_ids_order_and_kl(kind, k):
    ids, lp = teacher_rows(48, k, seed=k, kind=kind)
    blob = COMPACT.encode(ids, lp, SMOLLM_VOCAB)
    out_ids, out_lp = COMPACT.decode(blob, 48, k, SMOLLM_VOCAB)
    assert out_ids.dtype == np.int64 and out_lp.dtype == np.float32 and out_ids.shape == out_lp.shape == (48, k)
    assert np.array_equal(np.sort(out_ids, axis=1), np.sort(ids, axis=1))  # the same ids in every row
    assert (np.diff(out_lp, axis=1) <= 0).all()  # descending log-probs
    assert np.isfinite(out_lp).all() and (out_lp <= 0).all()

    kl = reference_kl(ids, lp, out_ids, out_lp)
    assert np.isfinite(kl).all()
    assert kl.mean() <= 1e-3, kl.mean()
    assert kl.mean() <= 1e-4, kl.mean()  # what the design gives (8-bit codes, exact mass): a regression guard

    # Each log-prob (matched by id) within half a quantization step of the exact one, plus the row's shared offset
    # (at most half the coarsest step). The step at a distance d below the top-1: (KNEE + d) log1p(span / KNEE) / 255.
    _, exact = by_id(ids, lp)
    _, decoded = by_id(out_ids, out_lp)
    knee, gap, span = CompactEncoding.KNEE, lp[:, :1] - exact, (lp[:, 0] - lp[:, -1])[:, None]
    half_step = (knee + gap) * np.log1p(span / knee) / 510
    coarsest = (knee + span) * np.log1p(span / knee) / 510
    assert (np.abs(decoded - exact) <= (half_step + coarsest) * 1.01 + 2e-6).all()
    assert (np.abs(decoded - exact)[gap <= 1] <= 0.02).all()  # near the top-1: within 2% in probability

    # The tail mass outside the top-k comes back to ~1e-6 (the decoder's safety margin), and never closes.
    tail = 1 - np.exp(lp.astype(np.float64)).sum(axis=1)
    out_tail = 1 - np.exp(out_lp.astype(np.float64)).sum(axis=1)
    assert np.allclose(out_tail, tail, rtol=1e-4, atol=2e-6)
    assert (out_tail >= tail - 1e-7).all() and (out_tail[tail > 0] > 0).all()

    # Random synthetic ids are the worst case for the id table (a real teacher's are far more regular).
    assert len(blob) < 0.45 * len(LOSSLESS.encode(ids, lp, SMOLLM_VOCAB))


def test_compact_peaked_flat_and_tied_rows():
    k, vocab = 8, 1000
    ids = np.array([[7, 3, 999, 0, 5, 6, 1, 2], [1, 2, 3, 4, 5, 6, 7, 8], [9, 8, 7, 6, 5, 4, 3, 2]])
    peaked = np.array([-1e-7, -17.0, -17.5, -18.0, -19.0, -20.0, -21.0, -25.0], dtype=np.float32)  # tail ~1e-7
    flat = np.full(k, np.float32(-np.log(vocab)), dtype=np.float32)  # uniform: every log-prob equal
    tied = np.array([-2.0, -2.0, -3.0, -3.0, -3.0, -4.0, -4.0, -40.0], dtype=np.float32)
    lp = np.stack([peaked, flat, tied])
    out_ids, out_lp = COMPACT.decode(COMPACT.encode(ids, lp, vocab), 3, k, vocab)
    assert np.array_equal(np.sort(out_ids, axis=1), np.sort(ids, axis=1))
    assert (np.diff(out_lp, axis=1) <= 0).all()
    kl = reference_kl(ids, lp, out_ids, out_lp)
    assert np.isfinite(kl).all() and kl.max() < 1e-4, kl
    assert out_ids[0, 0] == 7 and abs(out_lp[0, 0] - peaked[0]) < 2e-6  # the near-certain top-1 stays exact
    assert np.allclose(out_lp[1], flat, atol=1e-6)
    assert set(out_ids[2, :2]) == {9, 8} and set(out_ids[2, 2:5]) == {7, 6, 5}  # ties: any order within a tie


def test_compact_full_vocabulary_and_single_candidate():
    ids, lp = teacher_rows(6, 300, vocab_size=300, seed=3)  # k == vocab: the tail is 0 (up to rounding)
    out_ids, out_lp = COMPACT.decode(COMPACT.encode(ids, lp, 300), 6, 300, 300)
    kl = reference_kl(ids, lp, out_ids, out_lp)
    assert np.isfinite(kl).all() and kl.mean() < 1e-4
    ids, lp = teacher_rows(5, 1, seed=4)
    out_ids, out_lp = COMPACT.decode(COMPACT.encode(ids, lp, SMOLLM_VOCAB), 5, 1, SMOLLM_VOCAB)
    assert np.array_equal(out_ids, ids) and np.allclose(out_lp, lp, atol=1e-6)


@pytest.mark.parametrize("encoding", [LOSSLESS, COMPACT], ids=lambda e: e.name)
def test_empty_sample(encoding):
    ids, lp = np.zeros((0, 64), dtype=np.int64), np.zeros((0, 64), dtype=np.float32)
    out_ids, out_lp = encoding.decode(encoding.encode(ids, lp, SMOLLM_VOCAB), 0, 64, SMOLLM_VOCAB)
    assert out_ids.shape == out_lp.shape == (0, 64) and out_ids.dtype == np.int64 and out_lp.dtype == np.float32


@pytest.mark.parametrize("encoding", [LOSSLESS, COMPACT], ids=lambda e: e.name)
def test_vocab_above_65536(encoding):
    ids, lp = teacher_rows(12, 64, vocab_size=QWEN_VOCAB, seed=5)
    ids[0, 0], ids[1, 1] = QWEN_VOCAB - 1, 70000  # ids that need a third byte, and the largest one
    ids[2, -1] = 0
    out_ids, out_lp = encoding.decode(encoding.encode(ids, lp, QWEN_VOCAB), 12, 64, QWEN_VOCAB)
    assert np.array_equal(np.sort(out_ids, axis=1), np.sort(ids, axis=1))
    assert reference_kl(ids, lp, out_ids, out_lp).mean() <= 1e-4


def test_compact_huge_vocab_uses_the_sorted_table():
    vocab = 2**31 - 1
    ids = np.array([[vocab - 1, 0, 123456789, 5], [5, 2**30, 7, 8]], dtype=np.int64)
    lp = np.log(np.array([[0.5, 0.2, 0.1, 0.05], [0.4, 0.4, 0.1, 0.01]]).astype(np.float32))
    out_ids, out_lp = COMPACT.decode(COMPACT.encode(ids, lp, vocab), 2, 4, vocab)
    assert np.array_equal(np.sort(out_ids, axis=1), np.sort(ids, axis=1))
    assert reference_kl(ids, lp, out_ids, out_lp).max() < 1e-4


# ------------------------------------------------------------------------------------------------ corruption


@pytest.mark.parametrize("encoding", [LOSSLESS, COMPACT], ids=lambda e: e.name)
def test_corrupted_blobs_raise(encoding):
    ids, lp = teacher_rows(20, 16, seed=6)
    blob = encoding.encode(ids, lp, SMOLLM_VOCAB)
    for pos in np.linspace(0, len(blob) - 1, 40).astype(int):
        bad = bytearray(blob)
        bad[pos] ^= 0xFF
        with pytest.raises(CacheCorruptionError):
            encoding.decode(bytes(bad), 20, 16, SMOLLM_VOCAB)
    for cut in (0, 3, 10, len(blob) // 2, len(blob) - 1):
        with pytest.raises(CacheCorruptionError, match="truncated|decompress|bytes"):
            encoding.decode(blob[:cut], 20, 16, SMOLLM_VOCAB)
    with pytest.raises(CacheCorruptionError):
        encoding.decode(blob + b"\x00", 20, 16, SMOLLM_VOCAB)


@pytest.mark.parametrize("encoding", [LOSSLESS, COMPACT], ids=lambda e: e.name)
def test_mismatched_shape_or_vocab_raise(encoding):
    ids, lp = teacher_rows(20, 16, seed=7)
    blob = encoding.encode(ids, lp, SMOLLM_VOCAB)
    with pytest.raises(CacheCorruptionError, match="holds 20 positions x top-16, but 21 x top-16"):
        encoding.decode(blob, 21, 16, SMOLLM_VOCAB)
    with pytest.raises(CacheCorruptionError, match="but 20 x top-8"):
        encoding.decode(blob, 20, 8, SMOLLM_VOCAB)
    with pytest.raises(CacheCorruptionError, match="but 16 x top-20"):
        encoding.decode(blob, 16, 20, SMOLLM_VOCAB)
    with pytest.raises(CacheCorruptionError, match="vocabulary of 49152, not 151936"):
        encoding.decode(blob, 20, 16, QWEN_VOCAB)
    other = COMPACT if encoding is LOSSLESS else LOSSLESS
    with pytest.raises(CacheCorruptionError, match=f"not a {other.name} blob"):
        other.decode(blob, 20, 16, SMOLLM_VOCAB)


def test_corruption_inside_the_payload_is_caught_past_the_checksum():
    """Even a blob whose checksum is recomputed must not decode to ids outside the vocabulary."""
    import struct
    import zlib

    ids, lp = teacher_rows(4, 8, vocab_size=1000, seed=8)
    blob = bytearray(LOSSLESS.encode(ids, lp, 1000))
    struct.pack_into("<i", blob, 20, 5000)  # first id -> 5000
    struct.pack_into("<I", blob, 16, zlib.crc32(bytes(blob[20:])))
    with pytest.raises(CacheCorruptionError, match=r"ids outside \[0, 1000\)"):
        LOSSLESS.decode(bytes(blob), 4, 8, 1000)


# -------------------------------------------------------------------------------------------- input checks


@pytest.mark.parametrize("encoding", [LOSSLESS, COMPACT], ids=lambda e: e.name)
def test_encode_rejects_invalid_rows(encoding):
    ids, lp = teacher_rows(3, 4, vocab_size=100, seed=9)
    cases = {
        "must lie in": (np.where(ids == ids[0, 0], 100, ids), lp),
        "distinct": (np.tile(ids[:, :1], (1, 4)), lp),
        "finite": (ids, np.where(lp == lp[1, 2], np.float32(np.nan), lp)),
        "descending": (ids, lp[:, ::-1]),
        "mass of": (ids, lp - lp[:, :1]),  # top-1 at 0 and more: probabilities above 1 (logits, not log-probs)
        r"\[num_positions, k\]": (ids[:, :3], lp),
    }
    for message, (bad_ids, bad_lp) in cases.items():
        with pytest.raises(ValueError, match=message):
            encoding.encode(bad_ids, bad_lp, 100)
    with pytest.raises(TypeError):
        encoding.encode(ids.astype(np.float32), lp, 100)


# --------------------------------------------------------------------------------------------------- registry


def test_registry_and_get_encoding():
    assert set(ENCODINGS) == {"lossless-v1", "compact-v1"}
    for name, encoding in ENCODINGS.items():
        assert isinstance(encoding, Encoding) and encoding.name == name and get_encoding(name) is encoding
    assert isinstance(get_encoding("lossless"), LosslessEncoding)
    assert isinstance(get_encoding("compact"), CompactEncoding)
    assert get_encoding(DEFAULT_ENCODING) is get_encoding("compact")
    with pytest.raises(ValueError, match="choose one of: compact, compact-v1, lossless, lossless-v1"):
        get_encoding("zstd")
    assert issubclass(CacheCorruptionError, ValueError)
