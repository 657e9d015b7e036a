// ---- What both kernel paths share: parameters, row copies, quad reductions, the per-tile -------
// score -> probability step (online softmax, sigmoid, normalised sum) and the finalize/store step.
// The MMA paths (sm80_fwd.cuh: mma.sync; sm90_fwd.cuh: wgmma) differ in how the tiles are multiplied
// and how an accumulator is viewed as (rows, columns); the code below works on that view.

struct Params {
  const void* q; const void* k; const void* v; void* o; float* lse;
  int64_t q_sb, q_sh, q_sn, k_sb, k_sh, k_sn, v_sb, v_sh, v_sn, o_sb, o_sh, o_sn;
  int n_q, n_kv, heads, batch, group;
  // block tables (einfuse.lowering.blocks): counts per (mask head, query tile), padded index lists
  const int* full_num; const int* full_idx; const int* part_num; const int* part_idx;
  int64_t stride_nh, stride_fh, stride_fq, stride_ph, stride_pq;
  int tables, full_contig, part_contig, n_full_dense, n_k_tiles;
};

// The key tiles query tile t of head h visits, from the block tables (einfuse.lowering.blocks):
// FULL tiles first (no mask code), then PARTIAL ones; a dense plan walks every tile in order.
struct TileWalk {
  int n_full, n_part, n_tiles, j_full = 0, j_part = 0;
  int64_t row_f = 0, row_p = 0;

  __device__ __forceinline__ TileWalk(const Params& p, int h, int t) {
    if (p.tables) {
      n_full = p.full_num[h * p.stride_nh + t];
      n_part = p.part_num[h * p.stride_nh + t];
      row_f = h * p.stride_fh + t * p.stride_fq;
      row_p = h * p.stride_ph + t * p.stride_pq;
      j_full = p.full_idx[row_f];
      j_part = p.part_idx[row_p];
    } else {
      n_full = p.n_full_dense;
      n_part = p.n_k_tiles - p.n_full_dense;
      j_part = p.n_full_dense;
    }
    n_tiles = n_full + n_part;
  }

  // the i-th key tile visited (contiguous runs are read without the index lists)
  __device__ __forceinline__ int at(const Params& p, int i) const {
    if (i < n_full) return (!p.tables || p.full_contig) ? j_full + i : p.full_idx[row_f + i];
    i -= n_full;
    return (!p.tables || p.part_contig) ? j_part + i : p.part_idx[row_p + i];
  }
};

// Copy whole rows global -> shared with cp.async; rows at or past `rows` are zero-filled instead
// (ragged query or key tiles: a zero key row gives a finite score, a zero value row adds nothing).
template <class TiledCopy, class Src, class Dst, class Coord>
__device__ __forceinline__ void copy_rows(TiledCopy const& tc, Src const& src, Dst& dst, Coord const& coord,
                                          int rows) {
  CUTE_UNROLL
  for (int m = 0; m < size<1>(dst); ++m) {
    if (get<0>(coord(0, m, 0)) < rows) {
      cute::copy(tc, src(_, m, _), dst(_, m, _));
    } else {
      cute::clear(dst(_, m, _));
    }
  }
}

// Reduce over the 4 threads of a quad (they hold the same accumulator rows).
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, 2));
  return fmaxf(x, __shfl_xor_sync(0xffffffff, x, 1));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffff, x, 2);
  return x + __shfl_xor_sync(0xffffffff, x, 1);
}

// One key tile j: scores -> probabilities in place. Softmax: score in log2 units, mask on PARTIAL
// tiles, online row max, and alpha[r], the factor the output accumulator's row r must be rescaled by
// (the caller applies it: at once, or after an in-flight P.V of the previous tile has finished);
// sigmoid/normsum: the weights (alpha stays 1). s is an accumulator viewed (rows, columns); cS holds
// each element's (row, column) in the tile.
template <int kBlockM, int kBlockN, int kHeadDim, int kRows, class S, class CS>
__device__ __forceinline__ void score_probs(S& s, CS const& cS, float (&row_max)[kRows], float (&row_sum)[kRows],
                                            float (&alpha)[kRows], int t, int j, bool masked, int h, int b,
                                            int n_q, int n_kv, int heads, int batch) {
  CUTE_UNROLL
  for (int r = 0; r < size<0>(s); ++r) {
    alpha[r] = 1.0f;
    const int qi = t * kBlockM + get<0>(cS(r, 0));
    if constexpr (kFamily == kSoftmax) {
      // score (log2 units), mask, row max
      float mx = -INFINITY;
      CUTE_UNROLL
      for (int c = 0; c < size<1>(s); ++c) {
        const int ki = j * kBlockN + get<1>(cS(r, c));
        float x = kPlainScale ? s(r, c) : ef_score(s(r, c), qi, ki, h, b, n_q, n_kv, heads, batch, kHeadDim) * kLog2e;
        if (masked && !(ki < n_kv && ef_keep(qi, ki, h, b, n_q, n_kv, heads, batch))) x = -INFINITY;
        s(r, c) = x;
        mx = fmaxf(mx, x);
      }
      mx = quad_max(mx);
      if (kPlainScale) mx *= kScaleLog2;  // scale > 0: the max of scaled scores is the scaled max
      const float m_new = fmaxf(row_max[r], mx);
      // a row with every key masked so far keeps max -inf: subtract 0 instead (exp2(-inf) = 0, no NaN)
      const float m_sub = m_new == -INFINITY ? 0.0f : m_new;
      alpha[r] = exp2f(row_max[r] - m_sub);
      row_max[r] = m_new;
      float sum = 0.0f;
      CUTE_UNROLL
      for (int c = 0; c < size<1>(s); ++c) {
        const float pr = kPlainScale ? exp2f(s(r, c) * kScaleLog2 - m_sub) : exp2f(s(r, c) - m_sub);
        s(r, c) = pr;
        sum += pr;
      }
      row_sum[r] = row_sum[r] * alpha[r] + sum;  // this thread's share of the row; reduced at the end
    } else {
      // sigmoid: the activation of the score, no reduction; normsum: the weights and their sum
      CUTE_UNROLL
      for (int c = 0; c < size<1>(s); ++c) {
        const int ki = j * kBlockN + get<1>(cS(r, c));
        float a = ef_score(s(r, c), qi, ki, h, b, n_q, n_kv, heads, batch, kHeadDim);
        if constexpr (kFamily == kSigmoid) a = ef_sigmoid(a);
        if (masked && !(ki < n_kv && ef_keep(qi, ki, h, b, n_q, n_kv, heads, batch))) a = 0.0f;
        s(r, c) = a;
        if constexpr (kFamily == kNormsum) row_sum[r] += a;
      }
    }
  }
}

// Rescale the output accumulator's rows by alpha (softmax: the old max over the new one).
template <int kRows, class O>
__device__ __forceinline__ void rescale_rows(O& o, float const (&alpha)[kRows]) {
  if constexpr (kFamily == kSoftmax) {
    CUTE_UNROLL
    for (int r = 0; r < size<0>(o); ++r) {
      CUTE_UNROLL
      for (int c = 0; c < size<1>(o); ++c) o(r, c) *= alpha[r];
    }
  }
}

// score_probs, then the rescale of o at once (the paths without P.V in flight during the softmax).
template <int kBlockM, int kBlockN, int kHeadDim, int kRows, class S, class O, class CS>
__device__ __forceinline__ void score_tile(S& s, O& o, CS const& cS, float (&row_max)[kRows],
                                           float (&row_sum)[kRows], int t, int j, bool masked, int h, int b,
                                           int n_q, int n_kv, int heads, int batch) {
  float alpha[kRows];
  score_probs<kBlockM, kBlockN, kHeadDim, kRows>(s, cS, row_max, row_sum, alpha, t, j, masked, h, b, n_q, n_kv,
                                                 heads, batch);
  rescale_rows<kRows>(o, alpha);
}

// Finalize: divide by the row sum (rows with every key masked store 0), store O and the log-sum-exp.
template <class Element, int kBlockM, int kRows, class O, class CO>
__device__ __forceinline__ void store_output(const Params& p, O& o, CO const& cO, float (&row_max)[kRows],
                                             float (&row_sum)[kRows], int t, int h, int b) {
  const int n_q = p.n_q, heads = p.heads;
  Element* o_head = static_cast<Element*>(p.o) + b * p.o_sb + h * p.o_sh;
  CUTE_UNROLL
  for (int r = 0; r < size<0>(o); ++r) {
    float lse = 0.0f;
    if constexpr (kFamily != kSigmoid) {
      const float l = quad_sum(row_sum[r]);
      const float inv = l == 0.0f ? 1.0f : 1.0f / l;
      CUTE_UNROLL
      for (int c = 0; c < size<1>(o); ++c) o(r, c) *= inv;
      lse = l == 0.0f ? -INFINITY : row_max[r] * 0.6931471805599453f + logf(l);
    }
    const int qi = t * kBlockM + get<0>(cO(r, 0));
    if (qi < n_q) {
      Element* out_row = o_head + qi * p.o_sn;
      CUTE_UNROLL
      for (int c = 0; c < size<1>(o); ++c) out_row[get<1>(cO(r, c))] = static_cast<Element>(o(r, c));
      if (kFamily == kSoftmax && p.lse != nullptr && get<1>(cO(r, 0)) == 0) {
        p.lse[(static_cast<int64_t>(b) * heads + h) * n_q + qi] = lse;
      }
    }
  }
}

