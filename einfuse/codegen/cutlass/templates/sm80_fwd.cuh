// ---- SM80-style forward kernel (mma.sync through CuTe MMA atoms, cp.async, online softmax) -------
// Included by every generated source after the variant's ef_score / ef_keep and constants:
//   kFamily (kSoftmax | kSigmoid | kNormsum), kPlainScale (the score is scale * Q.K with scale > 0),
//   kScaleLog2 (scale * log2 e on that path), kLog2e.
// One CTA (4 warps) per (query tile of kBlockM, batch x head); it walks the key tiles its block-table
// row lists: FULL tiles first (no mask code), then PARTIAL ones (mask predicate and key bounds).
// Pipeline (FlashAttention-2's): K of tile i+1 loads while P.V of tile i runs; V of tile i while
// Q.K^T of tile i runs. Runs on sm_80 and newer (the Hopper path with TMA/wgmma is not written yet).

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
  const TileWalk walk(p, h, t);
  const int n_full = walk.n_full, n_tiles = walk.n_tiles;
  auto tile_at = [&](int i) { return walk.at(p, i); };

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

    score_tile<kBlockM, kBlockN, kD, kRows>(s, o, cS, row_max, row_sum, t, j, masked, h, b, n_q, n_kv, heads,
                                           batch);

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

  store_output<Element, kBlockM, kRows>(p, o, cO, row_max, row_sum, t, h, b);
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
