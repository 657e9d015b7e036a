"""Passes: IR -> IR rewrites of Einsum cascades, each checked by the reference executor.

* :func:`count_passes` - FuseMax's lower bound on passes over a rank, with the reason per Einsum;
* :func:`defer_division` - ``A = SN/SD; O = A*V`` -> ``O = (SN*V)/SD`` (3 -> 2 passes);
* :func:`fuse_online_softmax` - the 1-pass online-normalisation form (FlashAttention-2 / Cascade 5);
* :func:`tile_rank` - partition any rank, ragged last tile;
* :func:`classify_tiles` - EMPTY / PARTIAL / FULL tile pairs from the mask, without the dense mask;
* :func:`split_lightning` - Lightning Attention-2 intra/inter-block split of causal linear attention;
* :func:`split_kv` - split-KV / offloading: partial (max, sum, output) per split + combine;
* :func:`lower` - the pass manager (``PASSES`` registry, steps recorded for ``--print-after-all``).
"""

from einfuse.passes.block_sparsity import EMPTY, FULL, PARTIAL, TileMap, classify_tiles
from einfuse.passes.defer_division import defer_division
from einfuse.passes.fusion import fuse_online_softmax
from einfuse.passes.lightning import split_lightning
from einfuse.passes.manager import PASSES, LoweringResult, lower
from einfuse.passes.offload import split_kv
from einfuse.passes.pass_analysis import PassReport, count_passes
from einfuse.passes.tiling import tile_rank

__all__ = [
    "EMPTY", "FULL", "PARTIAL", "PASSES", "LoweringResult", "PassReport", "TileMap", "classify_tiles",
    "count_passes", "defer_division", "fuse_online_softmax", "lower", "split_kv", "split_lightning",
    "tile_rank",
]
