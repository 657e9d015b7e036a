// ---- SM80-style forward kernel (mma.sync through CuTe MMA atoms, cp.async, online softmax) -------
// Included by every generated source after the variant's ef_score / ef_keep and constants:
//   kFamily (kSoftmax | kSigmoid | kNormsum), kPlainScale (the score is scale * Q.K with scale > 0),
//   kScaleLog2 (scale * log2 e on that path), kLog2e.
// One CTA (4 warps) per (query tile of kBlockM, batch x head); it walks the key tiles its block-table
// row lists: FULL tiles first (no mask code), then PARTIAL ones (mask predicate and key bounds).
// Pipeline (FlashAttention-2's): K of tile i+1 loads while P.V of tile i runs; V of tile i while
// Q.K^T of tile i runs. Runs on sm_80 and newer (the Hopper path with TMA/wgmma is not written yet).

struct Params {
  const void* q; const void* k; const void* v; void* o; float* lse;
  int64_t q_sb, q_sh, q_sn, k_sb, k_sh, k_sn, v_sb, v_sh, v_sn, o_sb, o_sh, o_sn;
  int n_q, n_kv, heads, batch, group;
  // block tables (einfuse.lowering.blocks): counts per (mask head, query tile), padded index lists
  const int* full_num; const int* full_idx; const int* part_num; const int* part_idx;
  int64_t stride_nh, stride_fh, stride_fq, stride_ph, stride_pq;
  int tables, full_contig, part_contig, n_full_dense, n_k_tiles;
};

template <typename Element_, int kHeadDim_>
struct Traits {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = 128;
  static constexpr int kBlockN = 64;
  static constexpr int kNWarps = 4;
  static constexpr int kNThreads = kNWarps * 32;
  static constexpr int kRows = 2 * kBlockM / (16 * kNWarps);  // accumulator rows a thread holds
  static_assert(kHeadDim % 64 == 0, "head dim must be a multiple of 64");
  using MmaOp = std::conditional_t<std::is_same_v<Element, cutlass::half_t>,
                                   SM80_16x8x16_F32F16F16F32_TN, SM80_16x8x16_F32BF16BF16F32_TN>;
  // warps stacked along the query rows; each warp owns 16 rows of every 64
  using TiledMma = TiledMMA<MMA_Atom<MmaOp>, Layout<Shape<Int<kNWarps>, _1, _1>>,
                            Tile<Int<16 * kNWarps>, _16, _16>>;
  // 8 rows x 64 columns (128 bytes a row), swizzled so ldmatrix reads are free of bank conflicts
  using SmemLayoutAtom = decltype(composition(Swizzle<3, 3, 3>{},
                                              Layout<Shape<_8, _64>, Stride<_64, _1>>{}));
  using SmemLayoutQ = decltype(tile_to_shape(SmemLayoutAtom{}, Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  using SmemLayoutKV = decltype(tile_to_shape(SmemLayoutAtom{}, Shape<Int<kBlockN>, Int<kHeadDim>>{}));
  // V^T as the B operand of P.V: the same bytes as V, viewed (head dim, keys)
  using SmemLayoutVt = decltype(composition(SmemLayoutKV{},
                                            make_layout(Shape<Int<kHeadDim>, Int<kBlockN>>{}, GenRowMajor{})));
  using SmemCopyAtom = Copy_Atom<SM75_U32x4_LDSM_N, Element>;
  using SmemCopyAtomT = Copy_Atom<SM75_U16x8_LDSM_T, Element>;
  // global -> shared: 16 bytes (8 elements) per thread per cp.async, 8 threads per 64-column row
  using GmemCopy = decltype(make_tiled_copy(
      Copy_Atom<SM80_CP_ASYNC_CACHEGLOBAL<cute::uint128_t>, Element>{},
      Layout<Shape<Int<kNThreads / 8>, _8>, Stride<_8, _1>>{}, Layout<Shape<_1, _8>>{}));
  static constexpr int kSmemBytes = (kBlockM + 2 * kBlockN) * kHeadDim * int(sizeof(Element));
};

// The accumulator ((2,2), MMA_M, MMA_N) of m16n8k16 viewed as (rows, columns) of the tile:
// ((2 row halves, MMA_M), (2 adjacent columns, MMA_N)).
template <class Layout>
__device__ __forceinline__ auto rowcol(Layout const& l) {
  auto d = logical_divide(l, Shape<_2>{});
  return make_layout(make_layout(get<0, 1>(d), get<1>(d)), make_layout(get<0, 0>(d), get<2>(d)));
}

// The accumulator of Q.K^T reused as the A operand of P.V: two n-blocks of 8 form one k-block of 16.
template <class Layout>
__device__ __forceinline__ auto acc_as_a(Layout const& l) {
  auto d = logical_divide(l, Shape<X, X, _2>{});
  return make_layout(make_layout(get<0>(d), get<2, 0>(d)), get<1>(d), get<2, 1>(d));
}

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

// acc += A.B with both operands in shared memory, loading k-block k+1 while multiplying k-block k.
template <class TiledMma, class Acc, class RA, class RB, class SA, class SB, class CA, class TCA, class CB,
          class TCB>
__device__ __forceinline__ void gemm_ss(TiledMma& mma, Acc& acc, RA& rA, RB& rB, SA const& sA, SB const& sB,
                                        CA const& cpA, TCA const& thrA, CB const& cpB, TCB const& thrB) {
  auto rA_view = thrA.retile_D(rA);
  auto rB_view = thrB.retile_D(rB);
  cute::copy(cpA, sA(_, _, _0{}), rA_view(_, _, _0{}));
  cute::copy(cpB, sB(_, _, _0{}), rB_view(_, _, _0{}));
  CUTE_UNROLL
  for (int k = 0; k < size<2>(rA); ++k) {
    if (k < size<2>(rA) - 1) {
      cute::copy(cpA, sA(_, _, k + 1), rA_view(_, _, k + 1));
      cute::copy(cpB, sB(_, _, k + 1), rB_view(_, _, k + 1));
    }
    cute::gemm(mma, rA(_, _, k), rB(_, _, k), acc);
  }
}

// acc += A.B with A in registers (the probabilities P) and B in shared memory (V^T).
template <class TiledMma, class Acc, class RA, class RB, class SB, class CB, class TCB>
__device__ __forceinline__ void gemm_rs(TiledMma& mma, Acc& acc, RA const& rA, RB& rB, SB const& sB,
                                        CB const& cpB, TCB const& thrB) {
  auto rB_view = thrB.retile_D(rB);
  cute::copy(cpB, sB(_, _, _0{}), rB_view(_, _, _0{}));
  CUTE_UNROLL
  for (int k = 0; k < size<2>(rA); ++k) {
    if (k < size<2>(rA) - 1) {
      cute::copy(cpB, sB(_, _, k + 1), rB_view(_, _, k + 1));
    }
    cute::gemm(mma, rA(_, _, k), rB(_, _, k), acc);
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

template <class T>
__global__ void __launch_bounds__(T::kNThreads, 1) attn_fwd(const Params p) {
  using Element = typename T::Element;
  constexpr int kBlockM = T::kBlockM;
  constexpr int kBlockN = T::kBlockN;
  constexpr int kD = T::kHeadDim;
  constexpr int kRows = T::kRows;
  extern __shared__ __align__(128) char smem[];

  const int t = blockIdx.x;          // query tile
  const int h = blockIdx.y % p.heads;
  const int b = blockIdx.y / p.heads;
  const int hk = h / p.group;        // grouped-query attention: `group` query heads share one K/V head
  const int tid = threadIdx.x;
  const int n_q = p.n_q, n_kv = p.n_kv, heads = p.heads, batch = p.batch;

  const Element* q_head = static_cast<const Element*>(p.q) + b * p.q_sb + h * p.q_sh;
  const Element* k_head = static_cast<const Element*>(p.k) + b * p.k_sb + hk * p.k_sh;
  const Element* v_head = static_cast<const Element*>(p.v) + b * p.v_sb + hk * p.v_sh;
  Tensor mQ = make_tensor(make_gmem_ptr(q_head), make_shape(n_q, Int<kD>{}), make_stride(p.q_sn, _1{}));
  Tensor mK = make_tensor(make_gmem_ptr(k_head), make_shape(n_kv, Int<kD>{}), make_stride(p.k_sn, _1{}));
  Tensor mV = make_tensor(make_gmem_ptr(v_head), make_shape(n_kv, Int<kD>{}), make_stride(p.v_sn, _1{}));
  Tensor gQ = local_tile(mQ, Shape<Int<kBlockM>, Int<kD>>{}, make_coord(t, 0));   // (BM, D)
  Tensor gK = local_tile(mK, Shape<Int<kBlockN>, Int<kD>>{}, make_coord(_, 0));   // (BN, D, tiles)
  Tensor gV = local_tile(mV, Shape<Int<kBlockN>, Int<kD>>{}, make_coord(_, 0));

  Tensor sQ = make_tensor(make_smem_ptr(reinterpret_cast<Element*>(smem)), typename T::SmemLayoutQ{});
  Tensor sK = make_tensor(sQ.data() + size(sQ), typename T::SmemLayoutKV{});
  Tensor sV = make_tensor(sK.data() + size(sK), typename T::SmemLayoutKV{});
  Tensor sVt = make_tensor(sV.data(), typename T::SmemLayoutVt{});

  typename T::GmemCopy gmem_copy;
  auto g_thr = gmem_copy.get_thread_slice(tid);
  Tensor tQgQ = g_thr.partition_S(gQ);
  Tensor tQsQ = g_thr.partition_D(sQ);
  Tensor tKgK = g_thr.partition_S(gK);
  Tensor tKsK = g_thr.partition_D(sK);
  Tensor tVgV = g_thr.partition_S(gV);
  Tensor tVsV = g_thr.partition_D(sV);
  Tensor tQcQ = g_thr.partition_S(make_identity_tensor(Shape<Int<kBlockM>, Int<kD>>{}));
  Tensor tKVc = g_thr.partition_S(make_identity_tensor(Shape<Int<kBlockN>, Int<kD>>{}));

  typename T::TiledMma mma;
  auto thr_mma = mma.get_thread_slice(tid);
  Tensor tSrQ = thr_mma.partition_fragment_A(sQ);
  Tensor tSrK = thr_mma.partition_fragment_B(sK);
  Tensor tOrVt = thr_mma.partition_fragment_B(sVt);
  Tensor acc_o = partition_fragment_C(mma, Shape<Int<kBlockM>, Int<kD>>{});
  auto s2r_q = make_tiled_copy_A(typename T::SmemCopyAtom{}, mma);
  auto s2r_q_thr = s2r_q.get_thread_slice(tid);
  Tensor tSsQ = s2r_q_thr.partition_S(sQ);
  auto s2r_k = make_tiled_copy_B(typename T::SmemCopyAtom{}, mma);
  auto s2r_k_thr = s2r_k.get_thread_slice(tid);
  Tensor tSsK = s2r_k_thr.partition_S(sK);
  auto s2r_v = make_tiled_copy_B(typename T::SmemCopyAtomT{}, mma);
  auto s2r_v_thr = s2r_v.get_thread_slice(tid);
  Tensor tOsVt = s2r_v_thr.partition_S(sVt);

  // (row, column) of every accumulator element within its tile
  Tensor tScS = thr_mma.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{}));
  Tensor cS = make_tensor(tScS.data(), rowcol(tScS.layout()));
  Tensor tOcO = thr_mma.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kD>>{}));
  Tensor cO = make_tensor(tOcO.data(), rowcol(tOcO.layout()));
  Tensor o = make_tensor(acc_o.data(), rowcol(acc_o.layout()));

  // ---- the key tiles this query tile visits: FULL ones, then PARTIAL ones ----------------------
  int n_full, n_part, j_full = 0, j_part = 0;
  int64_t row_f = 0, row_p = 0;
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
  const int n_tiles = n_full + n_part;
  auto tile_at = [&](int i) -> int {
    if (i < n_full) return (!p.tables || p.full_contig) ? j_full + i : p.full_idx[row_f + i];
    i -= n_full;
    return (!p.tables || p.part_contig) ? j_part + i : p.part_idx[row_p + i];
  };

  float row_max[kRows], row_sum[kRows];
  CUTE_UNROLL
  for (int r = 0; r < kRows; ++r) { row_max[r] = -INFINITY; row_sum[r] = 0.0f; }
  clear(acc_o);

  copy_rows(gmem_copy, tQgQ, tQsQ, tQcQ, n_q - t * kBlockM);
  if (n_tiles > 0) {
    const int j0 = tile_at(0);
    copy_rows(gmem_copy, tKgK(_, _, _, j0), tKsK, tKVc, n_kv - j0 * kBlockN);
  }
  cute::cp_async_fence();

  for (int i = 0; i < n_tiles; ++i) {
    const int j = tile_at(i);
    const bool masked = i >= n_full;
    Tensor acc_s = partition_fragment_C(mma, Shape<Int<kBlockM>, Int<kBlockN>>{});
    clear(acc_s);
    cute::cp_async_wait<0>();
    __syncthreads();  // K of tile j is in shared memory; every thread is done with the last V
    copy_rows(gmem_copy, tVgV(_, _, _, j), tVsV, tKVc, n_kv - j * kBlockN);
    cute::cp_async_fence();

    // QK[m,p] = Q[p,e] * K[m,e]
    gemm_ss(mma, acc_s, tSrQ, tSrK, tSsQ, tSsK, s2r_q, s2r_q_thr, s2r_k, s2r_k_thr);
    Tensor s = make_tensor(acc_s.data(), rowcol(acc_s.layout()));

    CUTE_UNROLL
    for (int r = 0; r < size<0>(s); ++r) {
      const int qi = t * kBlockM + get<0>(cS(r, 0));
      if constexpr (kFamily == kSoftmax) {
        // score (log2 units), mask, row max
        float mx = -INFINITY;
        CUTE_UNROLL
        for (int c = 0; c < size<1>(s); ++c) {
          const int ki = j * kBlockN + get<1>(cS(r, c));
          float x = kPlainScale ? s(r, c) : ef_score(s(r, c), qi, ki, h, b, n_q, n_kv, heads, batch, T::kHeadDim) * kLog2e;
          if (masked && !(ki < n_kv && ef_keep(qi, ki, h, b, n_q, n_kv, heads, batch))) x = -INFINITY;
          s(r, c) = x;
          mx = fmaxf(mx, x);
        }
        mx = quad_max(mx);
        if (kPlainScale) mx *= kScaleLog2;  // scale > 0: the max of scaled scores is the scaled max
        const float m_new = fmaxf(row_max[r], mx);
        // a row with every key masked so far keeps max -inf: subtract 0 instead (exp2(-inf) = 0, no NaN)
        const float m_sub = m_new == -INFINITY ? 0.0f : m_new;
        const float alpha = exp2f(row_max[r] - m_sub);
        row_max[r] = m_new;
        float sum = 0.0f;
        CUTE_UNROLL
        for (int c = 0; c < size<1>(s); ++c) {
          const float pr = kPlainScale ? exp2f(s(r, c) * kScaleLog2 - m_sub) : exp2f(s(r, c) - m_sub);
          s(r, c) = pr;
          sum += pr;
        }
        row_sum[r] = row_sum[r] * alpha + sum;  // this thread's share of the row; reduced at the end
        CUTE_UNROLL
        for (int c = 0; c < size<1>(o); ++c) o(r, c) *= alpha;
      } else {
        // sigmoid: the activation of the score, no reduction; normsum: the weights and their sum
        CUTE_UNROLL
        for (int c = 0; c < size<1>(s); ++c) {
          const int ki = j * kBlockN + get<1>(cS(r, c));
          float a = ef_score(s(r, c), qi, ki, h, b, n_q, n_kv, heads, batch, T::kHeadDim);
          if constexpr (kFamily == kSigmoid) a = ef_sigmoid(a);
          if (masked && !(ki < n_kv && ef_keep(qi, ki, h, b, n_q, n_kv, heads, batch))) a = 0.0f;
          s(r, c) = a;
          if constexpr (kFamily == kNormsum) row_sum[r] += a;
        }
      }
    }

    cute::cp_async_wait<0>();
    __syncthreads();  // V of tile j is in shared memory; every thread is done with K
    if (i + 1 < n_tiles) {
      const int jn = tile_at(i + 1);
      copy_rows(gmem_copy, tKgK(_, _, _, jn), tKsK, tKVc, n_kv - jn * kBlockN);
      cute::cp_async_fence();
    }
    // O[p,f] += P[m,p] * V[m,f]
    Tensor pr = make_tensor<Element>(acc_s.layout());
    CUTE_UNROLL
    for (int e = 0; e < size(acc_s); ++e) pr(e) = static_cast<Element>(acc_s(e));
    Tensor tOrP = make_tensor(pr.data(), acc_as_a(pr.layout()));
    gemm_rs(mma, acc_o, tOrP, tOrVt, tOsVt, s2r_v, s2r_v_thr);
  }

  // ---- finalize: divide by the row sum (rows with every key masked store 0), log-sum-exp --------
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

template <class T>
cudaError_t launch(const Params& p, cudaStream_t stream) {
  auto kernel = attn_fwd<T>;
  if (T::kSmemBytes > 48 * 1024) {
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, T::kSmemBytes);
    if (err != cudaSuccess) return err;
  }
  dim3 grid((p.n_q + T::kBlockM - 1) / T::kBlockM, p.batch * p.heads);
  kernel<<<grid, T::kNThreads, T::kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}
