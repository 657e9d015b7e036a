// ---- Hopper forward kernel, warp-specialised: TMA loads through an mbarrier pipeline ---------------
// The FlashAttention-3 structure on top of the wgmma path (sm90_fwd.cuh: rowcol90, acc_as_a90, wgmma):
// three warpgroups per CTA. Warpgroup 0 is the producer: it gives registers back (setmaxnreg.dec) and
// one thread issues TMA loads (tensor maps built on the host) of Q once and of K and V for every key
// tile of the walk into a kStages-deep circular buffer. Warpgroups 1 and 2 are consumers (setmaxnreg
// .inc), each owning 64 of the 128 query rows: they wait on a stage's "full" barrier (TMA transaction
// count), run the wgmma, and arrive on the stage's "empty" barrier so the producer may refill it; the
// loads of later tiles overlap the MMAs and softmax of the current one. K and V have their own
// barriers, so Q.K^T starts as soon as K lands. The producer walks the same tiles as the consumers
// (TileWalk from the block tables), so masks, score mods and FULL/PARTIAL tiles are unchanged.
// TMA zero-fills rows past the end of the (rows, head dim, heads, batch) tensor, so a ragged last
// query or key tile reads zeros (never the next head's rows); the mask code still drops keys >= n_kv.
// kOverlap (Traits90pp, path sm90pp) adds the rest of FlashAttention-3's consumer schedule:
// intra-warpgroup overlap (Q.K^T of tile i and P.V of tile i-1 are issued together; the softmax of
// tile i runs while P.V of tile i-1 is still on the tensor cores, and the output rows are rescaled
// once it has finished) and ping-pong of the two consumer warpgroups (a pair of named barriers lets
// them take turns issuing their MMAs, so one warpgroup's softmax hides under the other's MMAs).
// Not yet here: a TMA store of O. Needs sm_90a.

template <typename Element_, int kHeadDim_, int kStages_ = 2, bool kOverlap_ = false>
struct Traits90ws {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr bool kOverlap = kOverlap_;
  static constexpr int kBlockM = 128;
  static constexpr int kBlockN = 64;
  static constexpr int kStages = kStages_;
  static constexpr int kConsumerThreads = 256;  // two consumer warpgroups
  static constexpr int kNThreads = kConsumerThreads + 128;
  static constexpr int kRows = 2;  // a thread holds rows r and r + 8 of its warp's 16
  // setmaxnreg: 128 x 40 + 256 x 232 <= 65536 registers of the SM (one CTA per SM)
  static constexpr int kProducerRegs = 40;
  static constexpr int kConsumerRegs = 232;
  static_assert(kHeadDim % 64 == 0, "head dim must be a multiple of 64");
  using Warpgroups = Layout<Shape<_2, _1, _1>>;  // stacked along the query rows
  using MmaQK = decltype(make_tiled_mma(
      GMMA::ss_op_selector<Element, Element, float, Shape<_64, Int<kBlockN>, Int<kHeadDim>>>(), Warpgroups{}));
  using MmaPV = decltype(make_tiled_mma(
      GMMA::rs_op_selector<Element, Element, float, Shape<_64, Int<kHeadDim>, Int<kBlockN>>, GMMA::Major::K,
                           GMMA::Major::MN>(), Warpgroups{}));
  using SmemLayoutQ = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<Element>{},
                                             Shape<Int<kBlockM>, Int<kHeadDim>>{}));
  // (keys, head dim, stage): one swizzled K (or V) tile per pipeline stage
  using SmemLayoutKV = decltype(tile_to_shape(GMMA::Layout_K_SW128_Atom<Element>{},
                                              Shape<Int<kBlockN>, Int<kHeadDim>, Int<kStages>>{}));
  // V^T (head dim, keys, stage) as the MN-major B operand of P.V: the same bytes as V
  using SmemLayoutVt = decltype(composition(
      SmemLayoutKV{}, make_ordered_layout(Shape<Int<kHeadDim>, Int<kBlockN>, Int<kStages>>{}, Step<_2, _1, _3>{})));
  static constexpr uint32_t kQBytes = kBlockM * kHeadDim * sizeof(Element);
  static constexpr uint32_t kKVBytes = kBlockN * kHeadDim * sizeof(Element);

  // A (rows, head dim, heads, batch) view of q, k or v; the tensor maps are built from it on the host.
  static auto gmem(const void* ptr, int n, int heads, int batch, int64_t sn, int64_t sh, int64_t sb) {
    return make_tensor(make_gmem_ptr(static_cast<Element const*>(ptr)), make_shape(n, Int<kHeadDim>{}, heads, batch),
                       make_stride(sn, _1{}, sh, sb));
  }
  using GmemTensor = decltype(gmem(nullptr, 0, 0, 0, 0, 0, 0));
  using TmaQ = decltype(make_tma_copy(SM90_TMA_LOAD{}, std::declval<GmemTensor>(), SmemLayoutQ{},
                                      Shape<Int<kBlockM>, Int<kHeadDim>>{}, _1{}));
  using TmaKV = decltype(make_tma_copy(SM90_TMA_LOAD{}, std::declval<GmemTensor>(),
                                       take<0, 2>(SmemLayoutKV{}), Shape<Int<kBlockN>, Int<kHeadDim>>{}, _1{}));

  struct SharedStorage {
    cute::array_aligned<Element, cosize_v<SmemLayoutQ>, 1024> q;
    cute::array_aligned<Element, cosize_v<SmemLayoutKV>, 1024> k;
    cute::array_aligned<Element, cosize_v<SmemLayoutKV>, 1024> v;
    // mbarriers: Q landed; per stage K/V landed (TMA transactions) and K/V free (consumer warps)
    alignas(8) uint64_t q_full;
    uint64_t k_full[kStages], v_full[kStages], k_empty[kStages], v_empty[kStages];
  };
  static constexpr int kSmemBytes = int(sizeof(SharedStorage));
};

template <typename Element, int kHeadDim>
using Traits90pp = Traits90ws<Element, kHeadDim, 2, true>;

template <class T>
struct TmaParams90 {
  typename T::TmaQ q;
  typename T::TmaKV k, v;
};

// mbarrier helpers (cutlass/arch/barrier.h) on raw shared-memory words
using Barrier = cutlass::arch::ClusterTransactionBarrier;

// acc (+)= A.B issued as one batch of warpgroup MMAs and committed, not waited for (warpgroup_wait).
template <class TiledMma, class TA, class TB, class TC>
__device__ __forceinline__ void wgmma_issue(TiledMma& mma, TA& a, TB const& b, TC& acc) {
  warpgroup_fence_operand(acc);
  warpgroup_arrive();
  CUTE_UNROLL
  for (int k = 0; k < size<2>(a); ++k) cute::gemm(mma, a(_, _, k), b(_, _, k), acc);
  warpgroup_commit_batch();
  warpgroup_fence_operand(acc);
}

// Ping-pong of the two consumer warpgroups (256 threads): warpgroup w waits on named barrier w
// before issuing its MMAs and then arrives on the other's; warpgroup 1 arrives on barrier 0 at the
// start so warpgroup 0 goes first, and warpgroup 0 takes that last arrival at the end (every barrier
// phase completes before the CTA exits).
__device__ __forceinline__ void turn_wait(int w) { cutlass::arch::NamedBarrier::arrive_and_wait(256, w); }
__device__ __forceinline__ void turn_pass(int w) { cutlass::arch::NamedBarrier::arrive(256, 1 - w); }

template <class T>
__global__ void __launch_bounds__(T::kNThreads, 1)
    attn_fwd_sm90ws(const __grid_constant__ Params p, const __grid_constant__ TmaParams90<T> tma) {
  using Element = typename T::Element;
  constexpr int kBlockM = T::kBlockM;
  constexpr int kBlockN = T::kBlockN;
  constexpr int kD = T::kHeadDim;
  constexpr int kRows = T::kRows;
  constexpr int kStages = T::kStages;
  constexpr int kConsumerWarps = T::kConsumerThreads / 32;
  extern __shared__ __align__(1024) char smem_raw[];
  auto& ss = *reinterpret_cast<typename T::SharedStorage*>(smem_raw);

  const int t = blockIdx.x;          // query tile
  const int h = blockIdx.y % p.heads;
  const int b = blockIdx.y / p.heads;
  const int hk = h / p.group;        // grouped-query attention
  const int n_q = p.n_q, n_kv = p.n_kv, heads = p.heads, batch = p.batch;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int warpgroup = warp / 4;

  Tensor sQ = make_tensor(make_smem_ptr(ss.q.data()), typename T::SmemLayoutQ{});
  Tensor sK = make_tensor(make_smem_ptr(ss.k.data()), typename T::SmemLayoutKV{});
  Tensor sV = make_tensor(make_smem_ptr(ss.v.data()), typename T::SmemLayoutKV{});

  if (threadIdx.x == 0) {
    cute::prefetch_tma_descriptor(tma.q.get_tma_descriptor());
    cute::prefetch_tma_descriptor(tma.k.get_tma_descriptor());
    cute::prefetch_tma_descriptor(tma.v.get_tma_descriptor());
    Barrier::init(&ss.q_full, 1);
    CUTE_UNROLL
    for (int s = 0; s < kStages; ++s) {
      Barrier::init(&ss.k_full[s], 1);
      Barrier::init(&ss.v_full[s], 1);
      Barrier::init(&ss.k_empty[s], kConsumerWarps);
      Barrier::init(&ss.v_empty[s], kConsumerWarps);
    }
    cutlass::arch::fence_barrier_init();
  }
  __syncthreads();

  const TileWalk walk(p, h, t);
  const int n_full = walk.n_full, n_tiles = walk.n_tiles;

  if (warpgroup == 0) {
    // ---- producer: one thread issues every TMA load -------------------------------------------------
    cutlass::arch::warpgroup_reg_dealloc<T::kProducerRegs>();
    if (warp == 0 && lane == 0 && n_tiles > 0) {
      Tensor mQ = tma.q.get_tma_tensor(make_shape(n_q, Int<kD>{}, heads, batch));
      Tensor mK = tma.k.get_tma_tensor(make_shape(n_kv, Int<kD>{}, heads / p.group, batch));
      Tensor mV = tma.v.get_tma_tensor(make_shape(n_kv, Int<kD>{}, heads / p.group, batch));
      Tensor gQ = local_tile(mQ(_, _, h, b), Shape<Int<kBlockM>, Int<kD>>{}, make_coord(t, 0));
      Tensor gK = local_tile(mK(_, _, hk, b), Shape<Int<kBlockN>, Int<kD>>{}, make_coord(_, 0));
      Tensor gV = local_tile(mV(_, _, hk, b), Shape<Int<kBlockN>, Int<kD>>{}, make_coord(_, 0));
      auto cta_q = tma.q.get_slice(0);
      auto cta_k = tma.k.get_slice(0);
      auto cta_v = tma.v.get_slice(0);
      Tensor tQgQ = cta_q.partition_S(gQ);
      Tensor tQsQ = cta_q.partition_D(sQ);
      Tensor tKgK = cta_k.partition_S(gK);  // (TMA, TMA_N, TMA_D, key tiles)
      Tensor tKsK = cta_k.partition_D(sK);  // (TMA, TMA_N, TMA_D, stages)
      Tensor tVgV = cta_v.partition_S(gV);
      Tensor tVsV = cta_v.partition_D(sV);

      Barrier::arrive_and_expect_tx(&ss.q_full, T::kQBytes);
      cute::copy(tma.q.with(ss.q_full), tQgQ, tQsQ);
      int stage = 0;
      uint32_t phase = 0;
      for (int i = 0; i < n_tiles; ++i) {
        const int j = walk.at(p, i);
        // a fresh barrier has completed "phase -1": the first kStages waits pass at once
        Barrier::wait(&ss.k_empty[stage], phase ^ 1);
        Barrier::arrive_and_expect_tx(&ss.k_full[stage], T::kKVBytes);
        cute::copy(tma.k.with(ss.k_full[stage]), tKgK(_, _, _, j), tKsK(_, _, _, stage));
        Barrier::wait(&ss.v_empty[stage], phase ^ 1);
        Barrier::arrive_and_expect_tx(&ss.v_full[stage], T::kKVBytes);
        cute::copy(tma.v.with(ss.v_full[stage]), tVgV(_, _, _, j), tVsV(_, _, _, stage));
        if (++stage == kStages) { stage = 0; phase ^= 1; }
      }
    }
    return;
  }

  // ---- consumers: warpgroups 1 and 2, query rows 0-63 and 64-127 of the tile ------------------------
  cutlass::arch::warpgroup_reg_alloc<T::kConsumerRegs>();
  const int ctid = threadIdx.x - 128;
  Tensor sVt = make_tensor(make_smem_ptr(ss.v.data()), typename T::SmemLayoutVt{});
  typename T::MmaQK mma_qk;
  typename T::MmaPV mma_pv;
  auto thr_qk = mma_qk.get_thread_slice(ctid);
  auto thr_pv = mma_pv.get_thread_slice(ctid);
  Tensor tSrQ = thr_qk.partition_fragment_A(sQ);   // shared-memory descriptors
  Tensor tSrK = thr_qk.partition_fragment_B(sK);   // (MMA, MMA_N, MMA_K, stages)
  Tensor tOrVt = thr_pv.partition_fragment_B(sVt);
  Tensor acc_o = partition_fragment_C(mma_pv, Shape<Int<kBlockM>, Int<kD>>{});

  Tensor tScS = thr_qk.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kBlockN>>{}));
  Tensor cS = make_tensor(tScS.data(), rowcol90(tScS.layout()));
  Tensor tOcO = thr_pv.partition_C(make_identity_tensor(Shape<Int<kBlockM>, Int<kD>>{}));
  Tensor cO = make_tensor(tOcO.data(), rowcol90(tOcO.layout()));
  Tensor o = make_tensor(acc_o.data(), rowcol90(acc_o.layout()));

  float row_max[kRows], row_sum[kRows];
  CUTE_UNROLL
  for (int r = 0; r < kRows; ++r) { row_max[r] = -INFINITY; row_sum[r] = 0.0f; }
  clear(acc_o);

  if (n_tiles > 0) Barrier::wait(&ss.q_full, 0);
  int stage = 0;
  uint32_t phase = 0;
  if constexpr (!T::kOverlap) {
    for (int i = 0; i < n_tiles; ++i) {
      const int j = walk.at(p, i);
      const bool masked = i >= n_full;
      Tensor acc_s = partition_fragment_C(mma_qk, Shape<Int<kBlockM>, Int<kBlockN>>{});
      clear(acc_s);
      // QK[m,p] = Q[p,e] * K[m,e]
      Barrier::wait(&ss.k_full[stage], phase);
      Tensor tSrK_s = tSrK(_, _, _, stage);
      wgmma(mma_qk, tSrQ, tSrK_s, acc_s);
      if (lane == 0) Barrier::arrive(&ss.k_empty[stage]);  // this warp is done reading K
      Tensor s = make_tensor(acc_s.data(), rowcol90(acc_s.layout()));
      score_tile<kBlockM, kBlockN, kD, kRows>(s, o, cS, row_max, row_sum, t, j, masked, h, b, n_q, n_kv, heads,
                                             batch);
      // O[p,f] += P[m,p] * V[m,f]
      Tensor pr = make_tensor<Element>(acc_s.layout());
      CUTE_UNROLL
      for (int e = 0; e < size(acc_s); ++e) pr(e) = static_cast<Element>(acc_s(e));
      Tensor tOrP = make_tensor(pr.data(), acc_as_a90(pr.layout()));
      warpgroup_fence_operand(tOrP);
      Barrier::wait(&ss.v_full[stage], phase);
      Tensor tOrVt_s = tOrVt(_, _, _, stage);
      wgmma(mma_pv, tOrP, tOrVt_s, acc_o);
      if (lane == 0) Barrier::arrive(&ss.v_empty[stage]);  // this warp is done reading V
      if (++stage == kStages) { stage = 0; phase ^= 1; }
    }
  } else {
    const int w = warpgroup - 1;  // consumer warpgroup 0 or 1
    if (w == 1) cutlass::arch::NamedBarrier::arrive(256, 0);
    Tensor acc_s = partition_fragment_C(mma_qk, Shape<Int<kBlockM>, Int<kBlockN>>{});
    Tensor s = make_tensor(acc_s.data(), rowcol90(acc_s.layout()));
    Tensor pr = make_tensor<Element>(acc_s.layout());  // P of the previous tile, the A operand of P.V
    Tensor tOrP = make_tensor(pr.data(), acc_as_a90(pr.layout()));
    float alpha[kRows];
    if (n_tiles > 0) {
      // QK[m,p] = Q[p,e] * K[m,e] of the first tile
      clear(acc_s);
      turn_wait(w);
      Barrier::wait(&ss.k_full[0], 0);
      Tensor tSrK_s = tSrK(_, _, _, 0);
      wgmma_issue(mma_qk, tSrQ, tSrK_s, acc_s);
      turn_pass(w);
      warpgroup_wait<0>();
      warpgroup_fence_operand(acc_s);
      if (lane == 0) Barrier::arrive(&ss.k_empty[0]);
      score_probs<kBlockM, kBlockN, kD, kRows>(s, cS, row_max, row_sum, alpha, t, walk.at(p, 0), n_full == 0, h, b,
                                               n_q, n_kv, heads, batch);  // o is still zero: no rescale
      CUTE_UNROLL
      for (int e = 0; e < size(acc_s); ++e) pr(e) = static_cast<Element>(acc_s(e));
    }
    for (int i = 1; i < n_tiles; ++i) {
      const int j = walk.at(p, i);
      const bool masked = i >= n_full;
      const int prev = stage;
      const uint32_t prev_phase = phase;
      if (++stage == kStages) { stage = 0; phase ^= 1; }
      clear(acc_s);
      turn_wait(w);
      // QK[m,p] = Q[p,e] * K[m,e] of tile i, then O[p,f] += P[m,p] * V[m,f] of tile i-1
      Barrier::wait(&ss.k_full[stage], phase);
      Tensor tSrK_s = tSrK(_, _, _, stage);
      wgmma_issue(mma_qk, tSrQ, tSrK_s, acc_s);
      Barrier::wait(&ss.v_full[prev], prev_phase);
      Tensor tOrVt_s = tOrVt(_, _, _, prev);
      warpgroup_fence_operand(tOrP);
      wgmma_issue(mma_pv, tOrP, tOrVt_s, acc_o);
      warpgroup_fence_operand(tOrP);  // P stays untouched until that P.V has finished
      turn_pass(w);
      warpgroup_wait<1>();  // Q.K^T of tile i has finished; P.V of tile i-1 may still run
      warpgroup_fence_operand(acc_s);
      if (lane == 0) Barrier::arrive(&ss.k_empty[stage]);
      score_probs<kBlockM, kBlockN, kD, kRows>(s, cS, row_max, row_sum, alpha, t, j, masked, h, b, n_q, n_kv,
                                               heads, batch);
      warpgroup_wait<0>();  // P.V of tile i-1 has finished: its V stage and P registers are free
      warpgroup_fence_operand(acc_o);
      warpgroup_fence_operand(tOrP);
      if (lane == 0) Barrier::arrive(&ss.v_empty[prev]);
      rescale_rows<kRows>(o, alpha);
      CUTE_UNROLL
      for (int e = 0; e < size(acc_s); ++e) pr(e) = static_cast<Element>(acc_s(e));
    }
    if (n_tiles > 0) {
      // O[p,f] += P[m,p] * V[m,f] of the last tile
      Barrier::wait(&ss.v_full[stage], phase);
      Tensor tOrVt_s = tOrVt(_, _, _, stage);
      warpgroup_fence_operand(tOrP);
      wgmma_issue(mma_pv, tOrP, tOrVt_s, acc_o);
      warpgroup_wait<0>();
      warpgroup_fence_operand(acc_o);
      if (lane == 0) Barrier::arrive(&ss.v_empty[stage]);
    }
    if (w == 0) turn_wait(0);  // warpgroup 1's last arrival
  }

  store_output<Element, kBlockM, kRows>(p, o, cO, row_max, row_sum, t, h, b);
}

template <class T>
cudaError_t launch90ws(const Params& p, cudaStream_t stream) {
  auto kernel = attn_fwd_sm90ws<T>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, T::kSmemBytes);
  if (err != cudaSuccess) return err;
  const int kv_heads = p.heads / p.group;
  TmaParams90<T> tma{
      make_tma_copy(SM90_TMA_LOAD{}, T::gmem(p.q, p.n_q, p.heads, p.batch, p.q_sn, p.q_sh, p.q_sb),
                    typename T::SmemLayoutQ{}, Shape<Int<T::kBlockM>, Int<T::kHeadDim>>{}, _1{}),
      make_tma_copy(SM90_TMA_LOAD{}, T::gmem(p.k, p.n_kv, kv_heads, p.batch, p.k_sn, p.k_sh, p.k_sb),
                    take<0, 2>(typename T::SmemLayoutKV{}), Shape<Int<T::kBlockN>, Int<T::kHeadDim>>{}, _1{}),
      make_tma_copy(SM90_TMA_LOAD{}, T::gmem(p.v, p.n_kv, kv_heads, p.batch, p.v_sn, p.v_sh, p.v_sb),
                    take<0, 2>(typename T::SmemLayoutKV{}), Shape<Int<T::kBlockN>, Int<T::kHeadDim>>{}, _1{})};
  dim3 grid((p.n_q + T::kBlockM - 1) / T::kBlockM, p.batch * p.heads);
  kernel<<<grid, T::kNThreads, T::kSmemBytes, stream>>>(p, tma);
  return cudaGetLastError();
}
