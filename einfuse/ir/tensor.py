"""Tensor declarations: an ordered list of ranks, a dtype, and which ranks are iterative."""

from __future__ import annotations

from dataclasses import dataclass, field

DTYPES = ("f16", "bf16", "f32", "f64")


@dataclass(frozen=True)
class Tensor:
    """A tensor over ``ranks`` (rank names, in storage order).

    Ranks in ``iterative`` are generative ranks of running reductions (``RM[m1+1,p] = ...``): along
    them the tensor has ``extent + 1`` elements, element 0 being the initial value and element
    ``extent`` the final one. Batch and head ranks are implicit on every tensor (as in the FuseMax
    notation); an input may have fewer heads than the queries (GQA), which the executors broadcast.
    """

    name: str
    ranks: tuple[str, ...]
    dtype: str = "f32"
    iterative: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ranks", tuple(self.ranks))
        object.__setattr__(self, "iterative", frozenset(self.iterative))
        if self.dtype not in DTYPES:
            raise ValueError(f"tensor {self.name}: dtype {self.dtype!r} not one of {', '.join(DTYPES)}")
