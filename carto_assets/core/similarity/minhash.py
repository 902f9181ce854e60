"""MinHash signatures of neuron top-k image sets (the LSH banding over them is in
:mod:`carto_assets.core.similarity.lsh`).

Signatures are bit-identical to ``datasketch.MinHash(num_perm=num_perm, seed=seed,
scheme=scheme)`` (datasketch 2.0.0) updated with ``encode_image_id(image_id, encoding)``
for every image id of the set, but computed with vectorized numpy over all neurons at
once: each distinct image id is SHA1-hashed exactly once, and the permutation/min step
runs over chunks of rows so that working memory stays bounded.

Element encoding (what datasketch's ``update`` receives for one image id):

* ``"int64le"`` (default): the 8-byte little-endian two's-complement int64,
  i.e. ``struct.pack("<q", image_id)`` == ``np.int64(image_id).tobytes()`` on
  little-endian machines. Fixed width and independent of number formatting.
* ``"decimal"``: the ASCII decimal string, i.e. ``str(image_id).encode()``.

Permutation schemes (datasketch 2.0.0, see ``datasketch/minhash.py``):

* ``"affine32"`` (datasketch's default): ``h = fmix32(sha1_hash32(x))``,
  ``phv = a * h + b  mod 2**32`` with odd ``a``; uint32 signatures.
* ``"affine64"``: the same over 64 bits with ``sha1_hash64``; uint64 signatures.
* ``"legacy"`` (datasketch < 2.0): ``phv = ((a * h + b) mod (2**61 - 1)) & (2**32 - 1)``
  with ``h = sha1_hash32(x)``; the product wraps modulo 2**64 exactly as in datasketch;
  uint64 signatures.

The signature of an empty set is all ``max_hash(scheme)``, which is what an
un-updated ``datasketch.MinHash`` holds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from operator import methodcaller
from typing import Literal

import numpy as np

from carto_assets.core.validate import check_choice, check_int, check_seed

Scheme = Literal["affine32", "affine64", "legacy"]
Encoding = Literal["int64le", "decimal"]

SCHEMES: tuple[str, ...] = ("affine32", "affine64", "legacy")
ENCODINGS: tuple[str, ...] = ("int64le", "decimal")

_MERSENNE_PRIME = np.uint64((1 << 61) - 1)
_MAX_HASH = {
    "legacy": np.uint64((1 << 32) - 1),
    "affine32": np.uint32((1 << 32) - 1),
    "affine64": np.uint64((1 << 64) - 1),
}
_DTYPES = {"legacy": np.uint64, "affine32": np.uint32, "affine64": np.uint64}
_FMIX = {
    32: (np.uint32(16), np.uint32(0x85EBCA6B), np.uint32(13), np.uint32(0xC2B2AE35), np.uint32(16)),
    64: (
        np.uint64(33),
        np.uint64(0xFF51AFD7ED558CCD),
        np.uint64(33),
        np.uint64(0xC4CEB9FE1A85EC53),
        np.uint64(33),
    ),
}
_HASH_CHUNK = 1 << 16
_DEFAULT_CHUNK_BYTES = 8 << 20


def max_hash(scheme: Scheme = "affine32") -> np.unsignedinteger:
    """Return the value an empty signature holds in every position for ``scheme``."""
    check_choice("scheme", scheme, SCHEMES)
    return _MAX_HASH[scheme]


def encode_image_id(image_id: int, encoding: Encoding = "int64le") -> bytes:
    """Return the bytes that represent one image id in datasketch's ``MinHash.update``.

    Parameters
    ----------
    image_id
        Non-negative image id.
    encoding
        ``"int64le"`` (8-byte little-endian int64) or ``"decimal"`` (ASCII digits).

    Returns
    -------
    bytes
        The encoded element.
    """
    check_choice("encoding", encoding, ENCODINGS)
    if encoding == "int64le":
        return int(image_id).to_bytes(8, "little", signed=True)
    return b"%d" % int(image_id)


def minhash_permutations(
    num_perm: int = 128, seed: int = 1, scheme: Scheme = "affine32"
) -> tuple[np.ndarray, np.ndarray]:
    """Return datasketch's permutation parameters ``(a, b)`` for ``num_perm`` and ``seed``.

    Parameters
    ----------
    num_perm
        Number of permutations (signature length).
    seed
        Seed of ``numpy.random.RandomState`` as used by datasketch, in ``[0, 2**32)``.
    scheme
        One of ``SCHEMES``.

    Returns
    -------
    tuple of numpy.ndarray
        ``a`` and ``b``, each of shape ``(num_perm,)`` and the scheme's dtype.
    """
    num_perm = check_int("num_perm", num_perm, minimum=1, maximum=1 << 32)
    # numpy.random.RandomState, which datasketch uses, only accepts seeds in [0, 2**32).
    seed = check_seed("seed", seed)
    check_choice("scheme", scheme, SCHEMES)
    gen = np.random.RandomState(seed)
    if scheme == "legacy":
        # datasketch draws a and b interleaved, one permutation at a time.
        ab = np.array(
            [
                (
                    gen.randint(1, _MERSENNE_PRIME, dtype=np.uint64),
                    gen.randint(0, _MERSENNE_PRIME, dtype=np.uint64),
                )
                for _ in range(num_perm)
            ],
            dtype=np.uint64,
        ).T
        return ab[0].copy(), ab[1].copy()
    dtype = _DTYPES[scheme]
    width = 32 if scheme == "affine32" else 64
    a = gen.randint(0, 1 << (width - 1), num_perm, dtype=dtype) * dtype(2) + dtype(1)
    b = gen.randint(0, 1 << width, num_perm, dtype=dtype)
    return a, b


def fmix(hv: np.ndarray, width: int) -> np.ndarray:
    """MurmurHash3 finalizer on uint32 (``width=32``) or uint64 (``width=64``) arrays.

    A bijective avalanche mix; datasketch's affine schemes pre-mix hash values with it.
    """
    s1, m1, s2, m2, s3 = _FMIX[width]
    hv = hv ^ (hv >> s1)
    hv = hv * m1
    hv = hv ^ (hv >> s2)
    hv = hv * m2
    return hv ^ (hv >> s3)


def as_id_array(name: str, values: object) -> np.ndarray:
    """Return ``values`` as a 1-D int64 array, or raise ValueError naming ``name`` if it is
    not 1-D, not integer, or has a negative entry."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} must be non-negative, got minimum {int(arr.min())}")
    return arr


def unique_inverse(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``np.unique(values, return_inverse=True)`` for non-negative int64 values.

    When the largest value is small compared with the input (dataset image indices usually
    are), a presence table replaces the sort.

    Parameters
    ----------
    values
        1-D non-negative int64 array.

    Returns
    -------
    tuple of numpy.ndarray
        ``(distinct, inverse)`` with ``distinct[inverse] == values``; ``inverse`` is int64.
    """
    if values.size == 0:
        return values.copy(), np.zeros(0, dtype=np.int64)
    top = int(values.max())
    if top < max(1 << 24, 4 * values.size):
        present = np.zeros(top + 1, dtype=bool)
        present[values] = True
        distinct = np.flatnonzero(present)
        code = np.cumsum(present, dtype=np.int64) - 1
        return distinct.astype(values.dtype), code[values]
    distinct, inverse = np.unique(values, return_inverse=True)
    return distinct, inverse.reshape(-1).astype(np.int64)


def _code_lookup(values: np.ndarray) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """Distinct values and a function mapping values to their index among them.

    Unlike ``unique_inverse`` this never materialises the full inverse, so callers can map
    one chunk at a time.
    """
    top = int(values.max())
    if top < max(1 << 24, 4 * values.size):
        present = np.zeros(top + 1, dtype=bool)
        present[values] = True
        distinct = np.flatnonzero(present).astype(values.dtype)
        table = np.cumsum(present, dtype=np.int64) - 1
        return distinct, table.__getitem__
    distinct = np.unique(values)
    return distinct, lambda chunk: np.searchsorted(distinct, chunk)


def hash_image_ids(
    image_ids: np.ndarray, *, scheme: Scheme = "affine32", encoding: Encoding = "int64le"
) -> np.ndarray:
    """Apply datasketch's default hash function to encoded image ids.

    Parameters
    ----------
    image_ids
        Non-negative image ids, shape ``(m,)``. Pass distinct ids: every entry is hashed.
    scheme
        ``"affine64"`` uses ``sha1_hash64`` (first 8 digest bytes, little-endian), the
        other schemes ``sha1_hash32`` (first 4 bytes).
    encoding
        Element encoding, see the module docstring.

    Returns
    -------
    numpy.ndarray
        Raw hash values (before the scheme's pre-mix), uint32 or uint64, shape ``(m,)``.
    """
    check_choice("scheme", scheme, SCHEMES)
    check_choice("encoding", encoding, ENCODINGS)
    ids = as_id_array("image_ids", image_ids)
    nbytes, dtype = (8, "<u8") if scheme == "affine64" else (4, "<u4")
    out = np.empty(ids.size, dtype=np.uint64 if nbytes == 8 else np.uint32)
    sha1 = hashlib.sha1
    digest = methodcaller("digest")
    for start in range(0, ids.size, _HASH_CHUNK):
        chunk = ids[start : start + _HASH_CHUNK]
        # One SHA1 per id is unavoidable in Python; map() keeps the per-id overhead minimal.
        if encoding == "int64le":
            raw = chunk.astype("<i8").tobytes()
            elements = [raw[o : o + 8] for o in range(0, len(raw), 8)]
        else:
            elements = list(map(b"%d".__mod__, chunk.tolist()))
        digests = b"".join(map(digest, map(sha1, elements)))
        raw = np.frombuffer(digests, dtype=np.uint8).reshape(-1, 20)[:, :nbytes]
        out[start : start + chunk.size] = np.ascontiguousarray(raw).view(dtype).ravel()
    return out


def minhash_signatures(
    indptr: np.ndarray,
    indices: np.ndarray,
    *,
    num_perm: int = 128,
    seed: int = 1,
    scheme: Scheme = "affine32",
    encoding: Encoding = "int64le",
    columns: int | None = None,
    chunk_bytes: int = _DEFAULT_CHUNK_BYTES,
) -> np.ndarray:
    """Compute one MinHash signature per row of a CSR set collection.

    Row ``r`` is the set ``indices[indptr[r]:indptr[r + 1]]`` (duplicates are harmless).
    ``out[r]`` equals ``datasketch.MinHash(num_perm, seed, scheme=scheme).hashvalues``
    after ``update(encode_image_id(x, encoding))`` for every ``x`` of the row.

    Parameters
    ----------
    indptr
        Row pointers, shape ``(n + 1,)``, non-decreasing, ``indptr[0] == 0``.
    indices
        Non-negative image ids, shape ``(indptr[-1],)``.
    num_perm
        Signature length.
    seed
        datasketch seed in ``[0, 2**32)``.
    scheme
        One of ``SCHEMES``; ``"affine32"`` is datasketch 2.0.0's default.
    encoding
        Element encoding, see the module docstring.
    columns
        Compute only the first ``columns`` values of each signature (identical to the
        first values of the full signature), e.g. the ``bands * rows`` that LSH uses.
        Default: all ``num_perm``.
    chunk_bytes
        Bound on the reused ``(num_perm, elements)`` work buffer; a single row larger than
        that is processed at once. Other memory is O(nnz) for per-element hashes plus the
        ``(n, num_perm)`` output, never O(nnz * num_perm).

    Returns
    -------
    numpy.ndarray
        Shape ``(n, columns or num_perm)``, uint32 for ``"affine32"``, uint64 otherwise.
        Empty rows hold ``max_hash(scheme)`` everywhere.
    """
    num_perm = check_int("num_perm", num_perm, minimum=1, maximum=1 << 32)
    chunk_bytes = check_int("chunk_bytes", chunk_bytes, minimum=1)
    a, b = minhash_permutations(num_perm, seed, scheme)
    if columns is not None:
        columns = check_int("columns", columns, minimum=1, maximum=num_perm)
        a, b = a[:columns], b[:columns]
    check_choice("encoding", encoding, ENCODINGS)
    indptr = np.asarray(indptr, dtype=np.int64)
    indices = as_id_array("indices", indices)
    if indptr.ndim != 1 or indptr.size < 1 or indptr[0] != 0 or np.any(np.diff(indptr) < 0):
        raise ValueError("indptr must be a non-decreasing 1-D array starting at 0")
    if indptr[-1] != indices.size:
        raise ValueError(f"indptr[-1] ({int(indptr[-1])}) must equal len(indices) ({indices.size})")

    n = indptr.size - 1
    num_perm = a.size
    dtype = _DTYPES[scheme]
    out = np.full((n, num_perm), _MAX_HASH[scheme], dtype=dtype)
    if indices.size == 0:
        return out

    distinct, to_code = _code_lookup(indices)
    hv = hash_image_ids(distinct, scheme=scheme, encoding=encoding)
    if scheme == "legacy":
        hv = hv.astype(np.uint64)
    else:
        hv = fmix(hv, 32 if scheme == "affine32" else 64)

    budget = max(1, chunk_bytes // (num_perm * np.dtype(dtype).itemsize))
    # One reused buffer: allocating a fresh large temporary per chunk costs page faults
    # that dominated the run time.
    buffer = np.empty((num_perm, budget), dtype=dtype)
    nonempty = np.flatnonzero(np.diff(indptr) > 0)
    pos = 0
    while pos < nonempty.size:
        first = indptr[nonempty[pos]]
        # Largest run of non-empty rows whose elements fit the budget (at least one row).
        end = int(np.searchsorted(indptr[nonempty + 1], first + budget, side="right"))
        end = max(end, pos + 1)
        rows = nonempty[pos:end]
        width = int(indptr[rows[-1] + 1] - first)
        # (num_perm, elements) layout: reduceat along the contiguous axis is ~10x faster.
        phv = buffer[:, :width] if width <= budget else np.empty((num_perm, width), dtype=dtype)
        elem_hash = hv[to_code(indices[first : first + width])]
        np.multiply(a[:, None], elem_hash[None, :], out=phv)
        phv += b[:, None]
        if scheme == "legacy":
            phv %= _MERSENNE_PRIME
            phv &= _MAX_HASH["legacy"]
        out[rows] = np.minimum.reduceat(phv, indptr[rows] - first, axis=1).T
        pos = end
    return out
