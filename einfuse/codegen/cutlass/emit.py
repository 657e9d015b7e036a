"""Print a one-pass kernel plan (softmax, sigmoid, normsum) as a CUDA C++ source on CuTe.

What is variant-specific comes from the plan and is printed here, each Einsum of the cascade as a
comment above the code that implements it:

* ``ef_score``: the score expression over the Q.K product (scale, ALiBi bias, soft-cap, ...);
* ``ef_keep``: the mask predicate, called on PARTIAL key tiles only;
* the family (online softmax, sigmoid, normalised weighted sum) and, for ``c * Q.K`` scores with
  ``c > 0``, the folded ``c * log2 e`` (one FMA per element, the row max scaled once).

Everything else is a fixed skeleton, pasted in so the written file stands alone (``nvcc -std=c++20
-arch=sm_90a -I<cutlass include> -c kernel.cu`` builds it): ``templates/common_fwd.cuh`` (tile walk,
per-tile softmax, finalize) with one of two MMA paths: ``sm80`` (``templates/sm80_fwd.cuh``: mma.sync,
runs on sm_80 and newer) or ``sm90`` (``templates/sm90_fwd.cuh``: wgmma, needs sm_90a). A
C entry point, ``einfuse_attn_fwd(params, dtype, head_dim, stream)``, dispatches to the compiled
(dtype, head dim) instances; with ``-DEINFUSE_TORCH_EXTENSION`` the file is also a torch extension
(``fwd(q, k, v, out, lse, tables..., ints)``), which is how :mod:`.build` loads it.
"""

from __future__ import annotations

import math
from importlib import resources

from einfuse.codegen.cutlass.printer import HELPERS, CppIndexPrinter, cpp_float, print_score
from einfuse.errors import CodegenError
from einfuse.ir.expr import substitute
from einfuse.ir.ranks import BATCH_INDEX, HEAD_INDEX, size_symbol
from einfuse.ir.ranks import KEY_INDEX as M_IDX
from einfuse.ir.ranks import QUERY_INDEX as P_IDX
from einfuse.lowering.plan import KernelPlan

LOG2E = math.log2(math.e)
FAMILIES = ("softmax", "sigmoid", "normsum")
DTYPES = {"bf16": "cutlass::bfloat16_t", "fp16": "cutlass::half_t"}
HEAD_DIMS = (64, 128)
ALL_CONFIGS = tuple((dt, d) for dt in DTYPES for d in HEAD_DIMS)
BLOCK_M, BLOCK_N = 128, 64
"""Tile sizes of the skeletons (``Traits``, ``Traits90``); the block tables are built for them."""
PATHS = ("sm80", "sm90", "sm90ws", "sm90pp")
"""MMA paths: ``sm80`` (mma.sync + cp.async, sm_80 and newer), ``sm90`` (wgmma + cp.async, sm_90a),
``sm90ws`` (wgmma, TMA loads through a multi-stage mbarrier pipeline, producer/consumer warpgroups;
sm_90a), ``sm90pp`` (sm90ws with FlashAttention-3's consumer schedule: intra-warpgroup overlap of
Q.K^T with the previous tile's P.V and softmax, ping-pong of the two consumer warpgroups; sm_90a)."""
HOPPER_PATHS = ("sm90", "sm90ws", "sm90pp")
_LAUNCHERS = {"sm80": "launch<Traits", "sm90": "launch90<Traits90", "sm90ws": "launch90ws<Traits90ws",
              "sm90pp": "launch90ws<Traits90pp"}
_SKELETONS = {"sm80": ("common", "sm80"), "sm90": ("common", "sm80", "sm90"),
              "sm90ws": ("common", "sm80", "sm90", "sm90ws"), "sm90pp": ("common", "sm80", "sm90", "sm90ws")}
_TITLES = {"sm80": "SM80-style path (mma.sync)", "sm90": "Hopper path (wgmma)",
           "sm90ws": "Hopper path (wgmma, TMA pipeline, warp-specialised)",
           "sm90pp": "Hopper path (wgmma, TMA pipeline, warp-specialised, intra-warpgroup overlap, ping-pong)"}
_HOPPER_INCLUDES = """#include <cute/arch/mma_sm90.hpp>  // GMMA op selectors
"""
_WS_INCLUDES = """#include <cute/atom/copy_traits_sm90_tma.hpp>  // TMA copies and tensor maps
#include <cutlass/arch/barrier.h>  // mbarriers
#include <cutlass/arch/reg_reconfig.h>  // setmaxnreg
"""


def check_plan(plan: KernelPlan) -> None:
    """Refuse plans this back end has no kernel for, naming the family."""
    if plan.family not in FAMILIES:
        raise CodegenError(f"{plan.name}: the CUTLASS back end prints one-pass plans (softmax, sigmoid, "
                           f"normsum); this plan's family is {plan.family} (use target='triton')")


def check_config(name: str, dtype: str, head_dim: int, head_dim_v: int | None = None) -> None:
    if dtype not in DTYPES:
        raise CodegenError(f"{name}: the CUTLASS kernel takes bfloat16 or float16 inputs, not {dtype} "
                           "(use target='triton' for float32)")
    if head_dim not in HEAD_DIMS or (head_dim_v is not None and head_dim_v != head_dim):
        got = f"{head_dim}" if head_dim_v in (None, head_dim) else f"{head_dim} (q/k) and {head_dim_v} (v)"
        raise CodegenError(f"{name}: the CUTLASS kernel takes head dims {' or '.join(map(str, HEAD_DIMS))} "
                           f"(the same for q, k and v), got {got}; pad the head dim or use target='triton'")


def cpp_names(sizes: dict[str, int]) -> dict:
    """C++ names of the symbols a score or mask may use; params become literal constants."""
    names = {P_IDX: "qi", M_IDX: "ki", HEAD_INDEX: "h", BATCH_INDEX: "b", size_symbol("P"): "n_q",
             size_symbol("M"): "n_kv", size_symbol("H"): "heads", size_symbol("B"): "batch"}
    for k, v in sizes.items():
        names.setdefault(size_symbol(k), str(int(v)))
    return names


def _bind(sizes: dict[str, int]) -> dict:
    return {size_symbol(k): int(v) for k, v in sizes.items() if k not in ("P", "M", "H", "B")}


def _comments(roles, *wanted: str, indent: str = "") -> str:
    return "".join(f"{indent}// {line}\n" for role, line in roles if role in wanted)


def check_path(name: str, path: str) -> None:
    if path not in PATHS:
        raise CodegenError(f"{name}: CUTLASS path {path!r} is unknown; choose one of {', '.join(PATHS)} "
                           "(or 'auto': sm90 on Hopper, else sm80)")


def emit_source(plan: KernelPlan, sizes: dict[str, int] | None = None,
                configs: tuple[tuple[str, int], ...] = ALL_CONFIGS, cascade_text: str = "",
                path: str = "sm80") -> str:
    """The complete ``.cu`` source for ``plan`` with kernel instances for ``configs``
    ((dtype, head dim) pairs) on the MMA ``path`` (``sm80`` | ``sm90``)."""
    check_plan(plan)
    check_path(plan.name, path)
    for dt, d in configs:
        check_config(plan.name, dt, d)
    op = plan.detail
    # integer params of the cascade (grid extents, windows) are compile-time constants
    bound = {k: int(v) for k, v in plan.cascade.params.items() if float(v).is_integer()}
    sizes = {**bound, **{k: int(v) for k, v in (sizes or {}).items()}}
    names = cpp_names(sizes)
    # the default scale 1/sqrt(E) reads the head dims; this back end needs D_v == D (check_config)
    names[size_symbol(op.head_rank)] = names[size_symbol(op.value_rank)] = "head_d"
    idx = CppIndexPrinter(names, context=f"cascade {plan.name}", tensors=(P_IDX, M_IDX))
    score = substitute(op.score, {s: __import__("sympy").Integer(v) for s, v in _bind(sizes).items()})
    score_code = print_score(score, idx, "qk")
    mask_code = "true"
    if op.mask is not None:
        mask_code = idx.predicate(op.mask.subs(_bind(sizes)))
    scale = op.plain_scale
    plain = plan.family == "softmax" and scale is not None and scale > 0
    family = {"softmax": "kSoftmax", "sigmoid": "kSigmoid", "normsum": "kNormsum"}[plan.family]
    roles = op.roles
    mask_line = f"m, p kept where {op.mask}" if op.mask is not None else "no mask: every pair kept"
    text = cascade_text or _cascade_text(plan)
    header = "".join(f"//   {line}\n" for line in text.rstrip().splitlines())
    launcher = _LAUNCHERS[path]
    instances = "\n".join(
        f"  if (dtype == {i} && head_dim == {d}) return {launcher}<{DTYPES[dt]}, {d}>>(*p, stream);"
        for i, (dt, d) in enumerate(configs))
    config_list = ", ".join(f'"{dt}/{d}"' for dt, d in configs)
    templates = resources.files("einfuse.codegen.cutlass").joinpath("templates")
    skeleton = "\n".join(templates.joinpath(f"{name}_fwd.cuh").read_text()
                         for name in _SKELETONS[path])
    title = _TITLES[path]
    build = "nvcc -std=c++20 -arch=sm_90a" if path in HOPPER_PATHS else "nvcc -std=c++20 -arch=sm_90a (or sm_80)"
    includes = (_HOPPER_INCLUDES if path in HOPPER_PATHS else "") + (_WS_INCLUDES if path in ("sm90ws", "sm90pp") else "")
    return f'''// einfuse kernel for cascade `{plan.name}` ({plan.family} family), CUTLASS/CuTe {title}.
// Generated by einfuse from the kernel plan of the cascade below ({plan.lowering});
// edit the spec, not this file. Build: {build}
// -I<nvidia-cutlass wheel>/cutlass_library/source/include -c this file.
// Key tiles come from block tables: FULL tiles without mask code, PARTIAL tiles with it, EMPTY never.
//
{header}
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <type_traits>

#include <cute/tensor.hpp>
{includes}#include <cutlass/numeric_types.h>

namespace einfuse_kernel {{
using namespace cute;
{HELPERS}
constexpr int kSoftmax = 0, kSigmoid = 1, kNormsum = 2;
constexpr int kFamily = {family};
constexpr float kLog2e = {cpp_float(LOG2E)};
// score = scale * Q.K with scale > 0: fold scale * log2 e into one multiply
constexpr bool kPlainScale = {"true" if plain else "false"};
constexpr float kScaleLog2 = {cpp_float(scale * LOG2E) if plain else "1.0f"};

// The score of one (query qi, key ki) pair from its dot product qk.
{_comments(roles, "score")}EF_FN float ef_score(float qk, int qi, int ki, int h, int b, int n_q, int n_kv, int heads,
                        int batch, int head_d) {{
  return {score_code};
}}

// The mask predicate ({mask_line}); evaluated on PARTIAL tiles only.
EF_FN bool ef_keep(int qi, int ki, int h, int b, int n_q, int n_kv, int heads, int batch) {{
  return {mask_code};
}}

// Cascade roles implemented by the skeleton below:
{_comments(roles, "init", "max", "numerator", "activation", "correction", "sum", "pv", "normalise", "final")}
{skeleton}
}}  // namespace einfuse_kernel

// C entry point: dtype 0.. indexes the compiled instances ({config_list}).
extern "C" cudaError_t einfuse_attn_fwd(const einfuse_kernel::Params* p, int dtype, int head_dim,
                                        cudaStream_t stream) {{
  using namespace einfuse_kernel;
{instances}
  return cudaErrorInvalidValue;
}}
{TORCH_BINDING}'''


def _cascade_text(plan: KernelPlan) -> str:
    from einfuse.ir.printer import format_cascade

    return format_cascade(plan.cascade)


TORCH_BINDING = r'''
#ifdef EINFUSE_TORCH_EXTENSION
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

// out, lse (or an empty tensor) are written; ints: dtype index, head dim, tables, full_contig,
// part_contig, n_full_dense, n_k_tiles, stride_nh, stride_fh, stride_fq, stride_ph, stride_pq
void fwd(at::Tensor q, at::Tensor k, at::Tensor v, at::Tensor out, at::Tensor lse, at::Tensor full_num,
         at::Tensor full_idx, at::Tensor part_num, at::Tensor part_idx, std::vector<int64_t> ints) {
  const c10::cuda::CUDAGuard guard(q.device());
  einfuse_kernel::Params p{};
  p.q = q.data_ptr(); p.k = k.data_ptr(); p.v = v.data_ptr(); p.o = out.data_ptr();
  p.lse = lse.numel() ? lse.data_ptr<float>() : nullptr;
  p.q_sb = q.stride(0); p.q_sh = q.stride(1); p.q_sn = q.stride(2);
  p.k_sb = k.stride(0); p.k_sh = k.stride(1); p.k_sn = k.stride(2);
  p.v_sb = v.stride(0); p.v_sh = v.stride(1); p.v_sn = v.stride(2);
  p.o_sb = out.stride(0); p.o_sh = out.stride(1); p.o_sn = out.stride(2);
  p.batch = q.size(0); p.heads = q.size(1); p.n_q = q.size(2); p.n_kv = k.size(2);
  p.group = q.size(1) / k.size(1);
  p.full_num = full_num.data_ptr<int>(); p.full_idx = full_idx.data_ptr<int>();
  p.part_num = part_num.data_ptr<int>(); p.part_idx = part_idx.data_ptr<int>();
  p.tables = ints[2]; p.full_contig = ints[3]; p.part_contig = ints[4];
  p.n_full_dense = ints[5]; p.n_k_tiles = ints[6];
  p.stride_nh = ints[7]; p.stride_fh = ints[8]; p.stride_fq = ints[9]; p.stride_ph = ints[10];
  p.stride_pq = ints[11];
  cudaError_t err = einfuse_attn_fwd(&p, int(ints[0]), int(ints[1]), at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "einfuse CUTLASS kernel launch failed: ", cudaGetErrorString(err));
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("fwd", &fwd, "einfuse attention forward (CUTLASS)"); }
#endif
'''
