# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The mapping search's objective, one mapping at a time in C.

``energy.dataflow.evaluate`` costs a batch of mappings with NumPy and keeps every access count
for the report; the search only needs each mapping's objective, and in NumPy its many
(K, L, 8) temporaries cost ~3 us a mapping. This loop does the same arithmetic per mapping,
operation for operation and in the same order (``ObjectivePlan`` carries the key orders the
dicts of ``evaluate`` accumulate in), so with IEEE arithmetic (built without -ffast-math or FMA
contraction) it returns the very same doubles: tests/test_estimator_objective.py checks bit
equality. Keep the two in step: a change to the cost model is made in both.
"""
from libc.math cimport ceil, INFINITY

import numpy as np
cimport numpy as cnp

cnp.import_array()

DEF MAXL = 16  # storage levels; the plan checks the spec has at most this many
DEF NOPS = 3   # weights, inputs, outputs (energy.dataflow.OPERANDS order)
# dims: N G M C P Q R S
DEF DN = 0
DEF DG = 1
DEF DM = 2
DEF DC = 3
DEF DP = 4
DEF DQ = 5
DEF DR = 6
DEF DS = 7


cdef inline double _words(double values, double bits, double width) nogil:
    return ceil(values * bits / width - 1e-9)


cdef inline double _footprint(int op, const double* f, const double* geo) nogil:
    """Values of operand ``op`` in a tile with per-dim factors f (energy.dataflow._footprint).
    geo: stride_h, dilation_h, H, stride_w, dilation_w, W."""
    cdef double h, w
    if op == 0:
        return f[DG] * f[DM] * f[DC] * f[DR] * f[DS]
    if op == 2:
        return f[DN] * f[DG] * f[DM] * f[DP] * f[DQ]
    h = (f[DP] - 1) * geo[0] + (f[DR] - 1) * geo[1] + 1
    if h > geo[2]:
        h = geo[2]
    w = (f[DQ] - 1) * geo[3] + (f[DS] - 1) * geo[4] + 1
    if w > geo[5]:
        w = geo[5]
    return f[DN] * f[DG] * f[DC] * h * w


cdef inline void _above(const double* per_level, double* out, int L) noexcept nogil:
    """out[l]: product of per_level over the levels above l, 1 at the top (dataflow._above,
    multiplied in the same order)."""
    cdef int l
    out[L - 1] = 1.0
    for l in range(L - 2, -1, -1):
        out[l] = per_level[l + 1] if l == L - 2 else out[l + 1] * per_level[l + 1]


def objective(const cnp.int64_t[:, :, :] temporal, const cnp.int64_t[:, :] spatial_rows,
              const cnp.int64_t[:, :] spatial_cols, const cnp.int64_t[:, :] order, plan):
    """(K,) objective of each mapping (energy or energy x cycles), +inf where it does not fit;
    ``plan``: energy.dataflow.ObjectivePlan of the layer and hardware."""
    cdef Py_ssize_t K = temporal.shape[0]
    cdef int L = plan.n_levels
    if temporal.shape[1] != L or temporal.shape[2] != 8 or spatial_rows.shape[1] != 8 or spatial_cols.shape[1] != 8 \
            or order.shape[1] != L or spatial_rows.shape[0] != K or spatial_cols.shape[0] != K or order.shape[0] != K:
        raise ValueError("mapping arrays do not match the plan's levels")
    cdef int n_per_pe = plan.n_per_pe
    cdef double array_rows = plan.rows, array_cols = plan.cols
    cdef const double[::1] geo = plan.geometry
    cdef const cnp.int64_t[:, ::1] orders = plan.orders
    cdef const cnp.uint8_t[:, ::1] relevant = plan.relevant
    cdef const cnp.int64_t[:, ::1] holds = plan.holds
    cdef const cnp.int64_t[::1] n_holds = plan.n_holds
    cdef const double[::1] dense_bits = plan.dense_bits
    cdef const double[::1] stored_bits = plan.stored_bits
    cdef const double[::1] read_scale = plan.read_scale
    cdef const double[::1] backing_bytes = plan.backing_bytes
    cdef const double[::1] bytes_per_value = plan.bytes_per_value
    cdef const double[::1] width = plan.width_bits
    cdef const double[::1] read_pj = plan.read_pj
    cdef const double[::1] write_pj = plan.write_pj
    cdef const double[::1] capacity = plan.capacity_bytes
    cdef const double[::1] bandwidth = plan.bandwidth_bytes_per_cycle
    cdef const cnp.int64_t[:, ::1] read_keys = plan.read_keys
    cdef const cnp.int64_t[:, ::1] write_keys = plan.write_keys
    cdef double noc_pj = plan.noc_pj, word = plan.word_bits, macs = plan.macs, compute_pj = plan.compute_pj
    cdef double eff_skip = plan.eff_skip, leakage = plan.leakage_mw * 1e9, clock_hz = plan.clock_hz
    cdef bint edp = plan.edp
    cdef int n_read_keys = read_keys.shape[0], n_write_keys = write_keys.shape[0]
    if L > MAXL:
        raise ValueError(f"at most {MAXL} storage levels")

    out_arr = np.empty(K, dtype=np.float64)
    cdef double[::1] out = out_arr
    # Per mapping scratch (levels x dims, innermost level first).
    cdef double spatial[8]
    cdef double per_pe[MAXL][8]
    cdef double with_spatial[MAXL][8]
    cdef double tile[MAXL][8]
    cdef double above[MAXL]
    cdef double distinct_o[MAXL]
    cdef double per_level[MAXL]
    cdef double t_ordered[MAXL * 8]
    cdef double prefix[MAXL * 8 + 1]
    cdef double fills[MAXL]
    cdef double used[MAXL]
    cdef double foot[NOPS][MAXL]
    cdef double reads[MAXL + 1][NOPS]
    cdef double writes[MAXL + 1][NOPS]
    cdef double level_bytes[MAXL]
    cdef Py_ssize_t k
    cdef int l, d, p, op, i, child, parent, inner, level, first, nh
    cdef long long rprod, cprod, iprod
    cdef double n_pes, x, copies, union_copies, per_copy, union, child_words, parent_words
    cdef double up, down, moved, per_mac, fresh, steps, energy, cycles, compute_cycles, bits_child, bits_parent
    cdef bint fits, crossing
    with nogil:
        for k in range(K):
            # Array fit and the tiles (energy.dataflow._tiles).
            rprod = 1
            cprod = 1
            for d in range(8):
                rprod = rprod * spatial_rows[k, d]
                cprod = cprod * spatial_cols[k, d]
                spatial[d] = <double>(spatial_rows[k, d] * spatial_cols[k, d])
            fits = rprod <= array_rows and cprod <= array_cols
            for l in range(L):
                for d in range(8):
                    x = <double>temporal[k, l, d]
                    per_pe[l][d] = x if l == 0 else per_pe[l - 1][d] * x
                    with_spatial[l][d] = per_pe[l][d] * spatial[d]
                    tile[l][d] = with_spatial[l][d] if l >= n_per_pe else per_pe[l][d]
            for op in range(NOPS):
                for l in range(L):
                    foot[op][l] = _footprint(op, &tile[l][0], &geo[0])
            # Capacity (energy.dataflow._fits): a level backing an operand holds all of it.
            for l in range(L):
                used[l] = 0.0
            for op in range(NOPS):
                nh = <int>n_holds[op]
                for i in range(nh - 1):
                    level = <int>holds[op, i]
                    used[level] += foot[op][level] * bytes_per_value[op]
                used[holds[op, nh - 1]] += backing_bytes[op]
            for l in range(L):
                if not (used[l] <= capacity[l] * (1 + 1e-12)):
                    fits = False
            if not fits:
                out[k] = INFINITY
                continue

            n_pes = 1.0
            for d in range(8):
                n_pes = n_pes * spatial[d]
            # Loops above each level: all of them, and the output-relevant ones (_above).
            for l in range(L):
                iprod = 1
                for d in range(8):
                    iprod = iprod * temporal[k, l, d]
                per_level[l] = <double>iprod
            _above(per_level, above, L)
            for l in range(L):
                iprod = 1
                for d in range(8):
                    if relevant[2, d]:
                        iprod = iprod * temporal[k, l, d]
                per_level[l] = <double>iprod
            _above(per_level, distinct_o, L)
            prefix[0] = 1.0
            for l in range(L):
                for i in range(8):
                    p = l * 8 + i
                    t_ordered[p] = <double>temporal[k, l, orders[order[k, l], i]]
                    prefix[p + 1] = prefix[p] * t_ordered[p]

            for l in range(L + 1):
                for op in range(NOPS):
                    reads[l][op] = 0.0
                    writes[l][op] = 0.0
            for op in range(NOPS):
                # fills: times each level's tile is (re)loaded, up to the first relevant loop above it.
                for l in range(L - 1):
                    first = L * 8
                    for p in range(L * 8 - 1, (l + 1) * 8 - 1, -1):
                        if relevant[op, orders[order[k, p // 8], p % 8]] and t_ordered[p] > 1:
                            first = p
                    fills[l] = above[l] * prefix[(l + 1) * 8] / prefix[first]
                fills[L - 1] = 1.0
                nh = <int>n_holds[op]
                for i in range(nh - 1):
                    child = <int>holds[op, i]
                    parent = <int>holds[op, i + 1]
                    crossing = child < n_per_pe and n_per_pe <= parent
                    per_copy = foot[op][child]
                    copies = n_pes if child < n_per_pe else 1.0
                    union = _footprint(op, &with_spatial[child][0], &geo[0]) if crossing else per_copy
                    union_copies = 1.0 if crossing else copies
                    bits_child = dense_bits[op] if child < n_per_pe else stored_bits[op]
                    bits_parent = dense_bits[op] if parent < n_per_pe else stored_bits[op]
                    child_words = copies * _words(per_copy, bits_child, width[child])
                    parent_words = union_copies * _words(union, bits_parent, width[parent])
                    if op == 2:
                        up = fills[child]
                        down = fills[child] - distinct_o[child]
                        reads[child][op] += up * child_words
                        writes[child][op] += down * child_words
                        writes[parent][op] += up * parent_words
                        reads[parent][op] += down * parent_words
                        moved = up + down
                    else:
                        writes[child][op] += fills[child] * child_words
                        reads[parent][op] += fills[child] * parent_words
                        moved = fills[child]
                    if crossing:
                        reads[L][op] += moved * copies * _words(per_copy, dense_bits[op], word)
                # The MACs' own accesses to the innermost level holding the operand.
                inner = <int>holds[op, 0]
                if inner < n_per_pe:
                    per_mac = macs * read_scale[op] * _words(1.0, dense_bits[op], width[inner])
                else:
                    steps = macs / n_pes
                    per_mac = steps * read_scale[op] * _words(_footprint(op, spatial, &geo[0]), dense_bits[op], width[inner])
                    reads[L][op] += macs * read_scale[op] * _words(1.0, dense_bits[op], word)
                if op == 2:
                    copies = n_pes if inner < n_per_pe else 1.0
                    fresh = distinct_o[inner] * copies * _words(foot[op][inner], dense_bits[op], width[inner])
                    writes[inner][op] += per_mac
                    x = per_mac - fresh
                    reads[inner][op] += x if x > 0.0 else 0.0
                else:
                    reads[inner][op] += per_mac

            # Energy and cycles, summed in evaluate's dict order.
            energy = compute_pj
            for l in range(L):
                level_bytes[l] = 0.0
            for i in range(n_read_keys):
                level = <int>read_keys[i, 0]
                op = <int>read_keys[i, 1]
                if level == L:
                    energy += reads[level][op] * noc_pj
                    continue
                energy += reads[level][op] * read_pj[level]
                level_bytes[level] += reads[level][op] * width[level] / 8
            for i in range(n_write_keys):
                level = <int>write_keys[i, 0]
                op = <int>write_keys[i, 1]
                energy += writes[level][op] * write_pj[level]
                level_bytes[level] += writes[level][op] * width[level] / 8
            compute_cycles = (macs / n_pes) * eff_skip
            cycles = level_bytes[0] / bandwidth[0]
            for l in range(1, L):
                x = level_bytes[l] / bandwidth[l]
                if x > cycles:
                    cycles = x
            if compute_cycles > cycles:
                cycles = compute_cycles
            energy = energy + leakage * cycles / clock_hz
            out[k] = energy * cycles if edp else energy
    return out_arr


def factors(const cnp.int64_t[:, :] assign, const cnp.int64_t[::1] dims, const cnp.int64_t[::1] primes, int slots):
    """(K, slots, 8) loop factors of K assignments of prime factors to slots: factor [k, s, d]
    is the product of the primes of dimension d that assignment k puts in slot s."""
    cdef Py_ssize_t K = assign.shape[0], n = assign.shape[1], k, i
    if dims.shape[0] != n or primes.shape[0] != n:
        raise ValueError("assign, dims and primes disagree on the number of primes")
    out_arr = np.ones((K, slots, 8), dtype=np.int64)
    cdef cnp.int64_t[:, :, ::1] out = out_arr
    cdef cnp.int64_t s
    for i in range(n):
        if not (0 <= dims[i] < 8):
            raise ValueError("dimension index out of range")
    with nogil:
        for k in range(K):
            for i in range(n):
                s = assign[k, i]
                if s < 0 or s >= slots:
                    with gil:
                        raise ValueError(f"slot {s} out of range")
                out[k, s, dims[i]] *= primes[i]
    return out_arr
