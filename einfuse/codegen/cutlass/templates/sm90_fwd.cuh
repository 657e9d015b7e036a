// ---- Hopper forward kernel, first step: wgmma (warpgroup MMA) through CuTe GMMA atoms -----------
// Same tile walk, pipeline and softmax as the SM80-style path (common_fwd.cuh), but both products
// are warpgroup MMAs reading shared memory through descriptors: Q.K^T with both operands in shared
// memory (SS), P.V with P in registers (RS, the FlashAttention-3 layout: no shared-memory round trip
// for P). Two warpgroups (256 threads) per CTA, each owning 64 of the 128 query rows. Loads stay
// cp.async (generic proxy), so a proxy fence orders them before the wgmma reads. Not yet here: TMA
// loads, warp specialisation (producer warp, consumer warpgroups) and softmax/GEMM ping-pong.
// Needs sm_90a.

template <typename Element_, int kHeadDim_>
struct Traits90 {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kBlockM = 128;
  static constexpr int kBlockN = 64;
  static constexpr int kNWarps = 8;
  static constexpr int kNThreads = kNWarps * 32;
  static constexpr int kRows = 2;  // a thread holds rows r and r + 8 of its warp's 16
  // CTAs per SM: at head dim 64 two fit (registers <= 128 a thread, 32 KB of shared memory each), so
  // one CTA's softmax and loads overlap the other's wgmma; at 128 the accumulators need more registers
  static constexpr int kMinBlocks = kHeadDim == 64 ? 2 : 1;
  static_assert(kHeadDim % 64 == 0, "head dim must be a multiple of 64");
  using Warpgroups = Layout<Shape<_2, _1, _1>>;  // stacked along the query rows
  using MmaQK = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, float, Shape<_64, Int<kBlockN>, Int<kHeadDim>>>(), Warpgroups{}));
  using MmaPV = decltype(make_tiled_mma(
      GMMA::rs_op_selector<Element, Element, float, Shape<_64, Int<kHeadDim>, Int<kBlockN>>, GMMA::Major::K,
                           GMMA::Major::MN>(), Warpgroups{}));
  // 128-byte swizzled rows, the layout wgmma descriptors address (K-major: head dim contiguous)
  using SmemLayoutQ = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<Element>{},
                                             Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  using SmemLayoutKV = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<Element>{},
                                              Shape<Int<kBlockN>, Int<kHeadDim>>{}));
  // V^T (head dim, keys) as the MN-major B operand of P.V: the same bytes as V
  using SmemLayoutVt = decltype(composition(SmemLayoutKV{},
                                            make_layout(Shape<Int<kHeadDim>, Int<kBlockN>>{}, GenRowMajor{})));
  using GmemCopy = decltype(make_tiled_copy(
      Copy_Atom<SM80_CP_ASYNC_CACHEGLOBAL<cute::uint128_t>, Element>{},
      Layout<Shape<Int<kNThreads / 8>, _8>, Stride<_8, _1>>{}, Layout<Shape<_1, _8>>{}));
  static constexpr int kSmemBytes = (kBlockM + 2 * kBlockN) * kHeadDim * int(sizeof(Element));
};

// A wgmma accumulator ((2 columns, 2 rows, N/8), MMA_M, MMA_N) viewed as (rows, columns).
template <class Layout>
__device__ __forceinline__ auto rowcol90(Layout const& l) {
  return make_layout(make_layout(get<0, 1>(l), get<1>(l)), make_layout(get<0, 0>(l), get<0, 2>(l), get<2>(l)));
}

// The Q.K^T accumulator as the register A operand of the P.V wgmma: pairs of 8-column blocks form
// one 16-key k-block ((2, 2, 2), MMA_M, keys / 16).
template <class Layout>
__device__ __forceinline__ auto acc_as_a90(Layout const& l) {
  auto n = logical_divide(get<0, 2>(l), Tile<_2>{});
  return make_layout(make_layout(get<0, 0>(l), get<0, 1>(l), get<0, 0>(n)), get<1>(l),
                     coalesce(make_layout(get<0, 1>(n), get<2>(l))));
}

// Writes through the generic proxy (cp.async, st.shared) become visible to wgmma's async proxy.
__device__ __forceinline__ void fence_async_shared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}

// acc (+)= A.B as one batch of warpgroup MMAs over the k-blocks, then wait for it.
template <class TiledMma, class TA, class TB, class TC>
__device__ __forceinline__ void wgmma(TiledMma& mma, TA& a, TB const& b, TC& acc) {
  warpgroup_fence_operand(acc);
  warpgroup_arrive();
  CUTE_UNROLL
  for (int k = 0; k < size<2>(a); ++k) cute::gemm(mma, a(_, _, k), b(_, _, k), acc);
  warpgroup_commit_batch();
  warpgroup_wait<0>();
  warpgroup_fence_operand(acc);
}

template <class T>
__global__ void __launch_bounds__(T::kNThreads, T::kMinBlocks) attn_fwd_sm90(const Params p) {
  using Element = typename T::Element;
  constexpr int kBlockM = T::kBlockM;
  constexpr int kBlockN = T::kBlockN;
  constexpr int kD = T::kHeadDim;
  constexpr int kRows = T::kRows;
  extern __shared__ __align__(128) char smem[];

  const int t = blockIdx.x;          // query tile
  const int h = blockIdx.y % p.heads;
  const int b = blockIdx.y / p.heads;
  const int hk = h / p.group;        // grouped-query attention
  const int tid = threadIdx.x;
  const int n_q = p.n_q, n_kv = p.n_kv, heads = p.heads, batch = p.batch;

  const Element* q_head = static_cast<const Element*>(p.q) + b * p.q_sb + h * p.q_sh;
  const Element* k_head = static_cast<const Element*>(p.k) + b * p.k_sb + hk * p.k_sh;
  const Element* v_head = static_cast<const Element*>(p.v) + b * p.v_sb + hk * p.v_sh;
  Tensor mQ = make_tensor(make_gmem_ptr(q_head), make_shape(n_q, Int<kD>{}), make_stride(p.q_sn, _1{}));
  Tensor mK = make_tensor(make_gmem_ptr(k_head), make_shape(n_kv, Int<kD>{}), make_stride(p.k_sn, _1{}));
  Tensor mV = make_tensor(make_gmem_ptr(v_head), make_shape(n_kv, Int<kD>{}), make_stride(p.v_sn, _1{}));
  Tensor gQ = local_tile(mQ, Shape<Int<kBlockM>, Int<kD>>{}, make_coord(t, 0));
  Tensor gK = local_tile(mK, Shape<Int<kBlockN>, Int<kD>>{}, make_coord(_, 0));
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

  typename T::MmaQK mma_qk;
  typename T::MmaPV mma_pv;
  auto thr_qk = mma_qk.get_thread_slice(tid);
  auto thr_pv = mma_pv.get_thread_slice(tid);
  Tensor tSrQ = thr_qk.partition_fragment_A(sQ);   // shared-memory descriptors
  Tensor tSrK = thr_qk.partition_fragment_B(sK);
  Tensor tOrVt = thr_pv.partition_fragment_B(sVt);
  Tensor acc_o = partition_fragment_C(mma_pv, Shape<Int<kBlockM>, Int<kD>>{});

  Tensor tScS = thr_qk.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{}));
  Tensor cS = make_tensor(tScS.data(), rowcol90(tScS.layout()));
  Tensor tOcO = thr_pv.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kD>>{}));
  Tensor cO = make_tensor(tOcO.data(), rowcol90(tOcO.layout()));
  Tensor o = make_tensor(acc_o.data(), rowcol90(acc_o.layout()));

  const TileWalk walk(p, h, t);
  const int n_full = walk.n_full, n_tiles = walk.n_tiles;

  float row_max[kRows], row_sum[kRows];
  CUTE_UNROLL
  for (int r = 0; r < kRows; ++r) { row_max[r] = -INFINITY; row_sum[r] = 0.0f; }
  clear(acc_o);

  copy_rows(gmem_copy, tQgQ, tQsQ, tQcQ, n_q - t * kBlockM);
  if (n_tiles > 0) {
    const int j0 = walk.at(p, 0);
    copy_rows(gmem_copy, tKgK(_, _, _, j0), tKsK, tKVc, n_kv - j0 * kBlockN);
  }
  cute::cp_async_fence();

  for (int i = 0; i < n_tiles; ++i) {
    const int j = walk.at(p, i);
    const bool masked = i >= n_full;
    Tensor acc_s = partition_fragment_C(mma_qk, Shape<Int<kBlockM>, Int<kBlockN>>{});
    clear(acc_s);
    cute::cp_async_wait<0>();
    fence_async_shared();
    __syncthreads();  // K of tile j is in shared memory; every warpgroup is done with the last V
    copy_rows(gmem_copy, tVgV(_, _, _, j), tVsV, tKVc, n_kv - j * kBlockN);
    cute::cp_async_fence();

    // QK[m,p] = Q[p,e] * K[m,e]
    wgmma(mma_qk, tSrQ, tSrK, acc_s);
    Tensor s = make_tensor(acc_s.data(), rowcol90(acc_s.layout()));
    score_tile<kBlockM, kBlockN, kD, kRows>(s, o, cS, row_max, row_sum, t, j, masked, h, b, n_q, n_kv, heads,
                                           batch);

    cute::cp_async_wait<0>();
    fence_async_shared();
    __syncthreads();  // V of tile j is in shared memory; every warpgroup is done with K
    if (i + 1 < n_tiles) {
      const int jn = walk.at(p, i + 1);
      copy_rows(gmem_copy, tKgK(_, _, _, jn), tKsK, tKVc, n_kv - jn * kBlockN);
      cute::cp_async_fence();
    }
    // O[p,f] += P[m,p] * V[m,f]
    Tensor pr = make_tensor<Element>(acc_s.layout());
    CUTE_UNROLL
    for (int e = 0; e < size(acc_s); ++e) pr(e) = static_cast<Element>(acc_s(e));
    Tensor tOrP = make_tensor(pr.data(), acc_as_a90(pr.layout()));
    warpgroup_fence_operand(tOrP);
    wgmma(mma_pv, tOrP, tOrVt, acc_o);
  }

  store_output<Element, kBlockM, kRows>(p, o, cO, row_max, row_sum, t, h, b);
}

template <class T>
cudaError_t launch90(const Params& p, cudaStream_t stream) {
  auto kernel = attn_fwd_sm90<T>;
  if (T::kSmemBytes > 48 * 1024) {
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, T::kSmemBytes);
    if (err != cudaSuccess) return err;
  }
  dim3 grid((p.n_q + T::kBlockM - 1) / T::kBlockM, p.batch * p.heads);
  kernel<<<grid, T::kNThreads, T::kSmemBytes, stream>>>(p);
  return cudaGetLastError();
}
