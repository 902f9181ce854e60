import math

import numpy as np
import pytest
from datasketch import MinHash, MinHashLSH
from datasketch.hashfunc import sha1_hash32, sha1_hash64

from carto_assets.core.similarity.lsh import (
    lsh_banding,
    lsh_candidate_pairs,
    optimal_lsh_params,
    pairs_within_runs,
)
from carto_assets.core.similarity.minhash import (
    ENCODINGS,
    SCHEMES,
    encode_image_id,
    hash_image_ids,
    max_hash,
    minhash_permutations,
    minhash_signatures,
    unique_inverse,
)


def _csr(sets):
    indptr = np.zeros(len(sets) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(s) for s in sets])
    indices = np.concatenate([np.asarray(s, dtype=np.int64) for s in sets] + [np.empty(0, int)])
    return indptr, indices


def _random_sets(seed, huge_ids=True):
    rng = np.random.default_rng(seed)
    sets = [rng.integers(0, 10**6, size=int(rng.integers(1, 60))) for _ in range(25)]
    sets += [
        [42],  # size 1
        [],  # empty
        [7, 7, 7, 3, 3],  # duplicates
        [0, 5],  # id 0
        rng.integers(0, 50, size=200),  # many duplicates
    ]
    if huge_ids:  # ids far above the set count take the sort-based distinct-id path
        sets.append([2**40, 2**62, 3])
    return sets


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize(("num_perm", "seed", "huge_ids"), [(128, 1, False), (37, 12345, True)])
def test_signatures_bit_identical_to_datasketch(scheme, encoding, num_perm, seed, huge_ids):
    sets = _random_sets(seed, huge_ids)
    indptr, indices = _csr(sets)
    # A tiny chunk budget forces many chunks, including single-row chunks.
    sig = minhash_signatures(
        indptr,
        indices,
        num_perm=num_perm,
        seed=seed,
        scheme=scheme,
        encoding=encoding,
        chunk_bytes=3000,
    )
    assert sig.shape == (len(sets), num_perm)
    for row, items in enumerate(sets):
        m = MinHash(num_perm=num_perm, seed=seed, scheme=scheme)
        for x in items:
            m.update(encode_image_id(int(x), encoding))
        assert sig.dtype == m.hashvalues.dtype
        np.testing.assert_array_equal(sig[row], m.hashvalues, err_msg=f"row {row}")


def test_default_is_datasketch_default():
    indptr, indices = _csr([[5, 9, 1000]])
    m = MinHash(num_perm=128, seed=1)
    for x in (5, 9, 1000):
        m.update(int(x).to_bytes(8, "little", signed=True))
    np.testing.assert_array_equal(minhash_signatures(indptr, indices)[0], m.hashvalues)


def test_empty_sets_are_max_hash_and_not_paired():
    indptr, indices = _csr([[], [], [1, 2]])
    for scheme in SCHEMES:
        sig = minhash_signatures(indptr, indices, num_perm=16, scheme=scheme)
        assert np.all(sig[:2] == max_hash(scheme))
        np.testing.assert_array_equal(sig[0], MinHash(num_perm=16, scheme=scheme).hashvalues)
    sig = minhash_signatures(indptr, indices, num_perm=16)
    cand = lsh_candidate_pairs(
        sig, np.zeros(3, dtype=np.int64), bands=4, rows=4, active=np.array([False, False, True])
    )
    assert cand.i.size == 0


def test_columns_is_prefix_of_full_signature():
    indptr, indices = _csr(_random_sets(3))
    full = minhash_signatures(indptr, indices, num_perm=128, seed=9)
    part = minhash_signatures(indptr, indices, num_perm=128, seed=9, columns=50)
    np.testing.assert_array_equal(part, full[:, :50])


def test_hash_and_permutations_match_datasketch():
    ids = np.array([0, 1, 99, 2**33, 2**62 + 5])
    h32 = hash_image_ids(ids, scheme="affine32", encoding="decimal")
    h64 = hash_image_ids(ids, scheme="affine64", encoding="int64le")
    assert h32.tolist() == [sha1_hash32(str(x).encode()) for x in ids.tolist()]
    assert h64.tolist() == [sha1_hash64(int(x).to_bytes(8, "little")) for x in ids.tolist()]
    for scheme in SCHEMES:
        a, b = minhash_permutations(20, 77, scheme)
        ref = MinHash(num_perm=20, seed=77, scheme=scheme).permutations
        np.testing.assert_array_equal(a, ref[0])
        np.testing.assert_array_equal(b, ref[1])


def test_encode_image_id():
    assert encode_image_id(258) == b"\x02\x01\x00\x00\x00\x00\x00\x00"
    assert encode_image_id(258, "decimal") == b"258"


@pytest.mark.parametrize("threshold", [0.1, 0.3, 0.5, 0.8, 0.95])
@pytest.mark.parametrize("weights", [(0.5, 0.5), (0.2, 0.8), (0.9, 0.1)])
@pytest.mark.parametrize("num_perm", [16, 64, 128])
def test_optimal_params_match_datasketchs_lsh(threshold, weights, num_perm):
    """Our search picks the banding datasketch's MinHashLSH picks (its public .b and .r)."""
    bands, rows = optimal_lsh_params(threshold, num_perm, weights)
    try:
        lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=weights)
    except ValueError as exc:  # its search found one band, which its constructor refuses
        assert "b < 2" in str(exc) and bands == 1
        return
    assert (bands, rows) == (lsh.b, lsh.r)


def test_threshold_one_gets_one_band_of_every_row():
    # datasketch's constructor refuses the best banding here (fewer than 2 bands).
    assert optimal_lsh_params(1.0, 32) == (1, 32)


def test_unique_inverse_matches_numpy_on_both_paths():
    rng = np.random.default_rng(0)
    for values in (rng.integers(0, 1000, 5000), rng.integers(0, 2**50, 5000), np.array([3])):
        distinct, inverse = unique_inverse(values.astype(np.int64))
        ref, ref_inv = np.unique(values, return_inverse=True)
        np.testing.assert_array_equal(distinct, ref)
        np.testing.assert_array_equal(inverse, ref_inv)


def test_pairs_within_runs():
    i, j = pairs_within_runs(np.array([5, 2, 9, 4, 7, 1]), np.array([3, 0, 1, 2]))
    assert sorted(zip(i.tolist(), j.tolist())) == [(1, 7), (2, 5), (2, 9), (5, 9)]


def test_lsh_candidates_pair_equal_bands_within_groups_only():
    rng = np.random.default_rng(1)
    sig = rng.integers(0, 2**32, size=(6, 8), dtype=np.uint64).astype(np.uint32)
    sig[1, :4] = sig[0, :4]  # rows 0 and 1 share band 0
    sig[2] = sig[0]  # row 2 equals row 0 but sits in another group
    sig[4, 4:] = sig[3, 4:]  # rows 3 and 4 share band 1
    groups = np.array([0, 0, 1, 0, 0, 0])
    cand = lsh_candidate_pairs(sig, groups, bands=2, rows=4)
    assert list(zip(cand.i.tolist(), cand.j.tolist())) == [(0, 1), (3, 4)]
    assert cand.largest_bucket == 2


def test_lsh_max_bucket_size_skips_giant_buckets():
    sig = np.zeros((50, 4), dtype=np.uint32)
    sig[:, 2:] = np.arange(50)[:, None]  # band 0 (columns 0-1) is shared by all rows
    sig[7, 2:] = sig[8, 2:]  # rows 7 and 8 also share band 1
    groups = np.zeros(50, dtype=np.int64)
    full = lsh_candidate_pairs(sig, groups, bands=2, rows=2)
    assert full.i.size == 50 * 49 // 2
    capped = lsh_candidate_pairs(sig, groups, bands=2, rows=2, max_bucket_size=10)
    assert list(zip(capped.i.tolist(), capped.j.tolist())) == [(7, 8)]
    assert capped.n_skipped_buckets == 1 and capped.largest_bucket == 50


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"num_perm": 0}, ValueError, r"num_perm must be an integer in \[1, 4294967296\], got 0"),
        (
            {"num_perm": 2.5},
            TypeError,
            r"num_perm must be an integer in \[1, 4294967296\], got 2.5",
        ),
        ({"seed": -1}, ValueError, r"seed must be an integer in \[0, 4294967295\], got -1"),
        ({"seed": 2**32}, ValueError, "seed must be an integer"),
        ({"scheme": "affine16"}, ValueError, "scheme must be one of"),
        ({"encoding": "utf8"}, ValueError, "encoding must be one of"),
        ({"columns": 200}, ValueError, r"columns must be an integer in \[1, 128\], got 200"),
        ({"chunk_bytes": 0}, ValueError, "chunk_bytes must be an integer >= 1, got 0"),
    ],
)
def test_signature_bad_arguments(kwargs, error, message):
    indptr, indices = _csr([[1, 2]])
    with pytest.raises(error, match=message):
        minhash_signatures(indptr, indices, **kwargs)


def test_signature_bad_sets():
    with pytest.raises(ValueError, match="indices must be non-negative, got minimum -3"):
        minhash_signatures(np.array([0, 2]), np.array([1, -3]))
    with pytest.raises(ValueError, match=r"indptr\[-1\] \(3\) must equal len\(indices\) \(2\)"):
        minhash_signatures(np.array([0, 3]), np.array([1, 2]))
    with pytest.raises(ValueError, match="indices must hold integers"):
        minhash_signatures(np.array([0, 1]), np.array([1.5]))


@pytest.mark.parametrize(
    ("bands", "rows", "message"),
    [
        (0, 4, "bands must be an integer >= 1, got 0"),
        (4, -1, "rows must be an integer >= 1, got -1"),
        (5, 4, r"bands \* rows must be <= num_perm \(16\), got bands=5 \* rows=4 = 20"),
    ],
)
def test_lsh_bad_banding(bands, rows, message):
    sig = np.zeros((3, 16), dtype=np.uint32)
    with pytest.raises(ValueError, match=message):
        lsh_candidate_pairs(sig, np.zeros(3, dtype=np.int64), bands=bands, rows=rows)


@pytest.mark.parametrize(
    ("threshold", "error"),
    [
        (0, ValueError),
        (-0.1, ValueError),
        (1.5, ValueError),
        (math.nan, ValueError),
        (True, TypeError),
        ("0.5", TypeError),
    ],
)
def test_optimal_params_bad_threshold(threshold, error):
    with pytest.raises(error, match="threshold must be a number in \\(0, 1\\]"):
        optimal_lsh_params(threshold, 128)


def test_optimal_params_bad_weights():
    with pytest.raises(ValueError, match="weights must be two non-negative numbers summing to 1"):
        optimal_lsh_params(0.5, 128, (0.5, 0.6))


def test_lsh_bad_bucket_cap_and_groups():
    sig = np.zeros((3, 4), dtype=np.uint32)
    with pytest.raises(ValueError, match="max_bucket_size must be an integer >= 1, got 0"):
        lsh_candidate_pairs(sig, np.zeros(3, int), bands=2, rows=2, max_bucket_size=0)
    with pytest.raises(ValueError, match=r"groups must be an integer array of shape \(3,\)"):
        lsh_candidate_pairs(sig, np.zeros(2, int), bands=2, rows=2)


def test_lsh_banding_takes_both_or_neither_and_checks_them():
    # Derived: the search's rows, and every permutation in a band.
    assert optimal_lsh_params(0.3, 128, (0.05, 0.95)) == (41, 2)
    assert lsh_banding(0.3, 128) == (64, 2)
    rows = optimal_lsh_params(0.3, 128, (0.5, 0.5))[1]
    assert lsh_banding(0.3, 128, weights=(0.5, 0.5)) == (128 // rows, rows)
    assert lsh_banding(0.5, 100) == (33, 3)
    assert lsh_banding(0.3, 128, 16, 8) == (16, 8)
    with pytest.raises(ValueError, match="both bands and rows or neither"):
        lsh_banding(0.3, 128, 16, None)
    with pytest.raises(ValueError):
        lsh_banding(0.3, 128, 40, 4)  # 160 > 128
