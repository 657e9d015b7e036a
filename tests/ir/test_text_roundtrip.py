"""Print -> parse round-trips: the text form is a faithful serialisation of the IR."""

import math

import sympy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import einfuse
from einfuse.ir import (
    Access,
    Cascade,
    Const,
    Einsum,
    Empty,
    IndexValue,
    Rank,
    Tensor,
    binary,
    format_cascade,
    parse_cascade,
    select,
    unary,
    validate,
)
from einfuse.ir.expr import BINARY_OPS, UNARY_OPS
from einfuse.ir.ranks import index_symbol, size_symbol

p, m, e = (index_symbol(n) for n in "pme")
W = size_symbol("W")
INPUTS = {"X": ("M", "P"), "Y": ("P",), "Z": ("M", "E")}
INDEX = {"M": m, "P": p, "E": e}

index_values = st.sampled_from([p - m, m - p + 3, sympy.floor(p / 3), sympy.Mod(m, 4), 2 * p, W - m,
                                sympy.Abs(p - m), sympy.Max(0, p - 2)])
predicates = st.sampled_from([m <= p, (m <= p) & (p - m < W), sympy.Abs(p - m) <= 2,
                              sympy.Eq(sympy.Mod(m, 2), 0) | (p < 3), m > p])
constants = st.one_of(st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False),
                      st.sampled_from([math.inf, -math.inf, 0.0, 0.125]))


def accesses(shapes):
    return st.sampled_from([Access(n, tuple(INDEX[r] for r in rs)) for n, rs in shapes.items()])


def exprs(shapes):
    leaves = st.one_of(accesses(shapes), constants.map(Const), index_values.map(IndexValue))
    return st.recursive(
        leaves,
        lambda kids: st.one_of(
            st.tuples(st.sampled_from(BINARY_OPS), kids, kids).map(lambda t: binary(*t)),
            st.tuples(st.sampled_from(UNARY_OPS), kids).map(lambda t: unary(*t)),
            st.tuples(predicates, kids, kids).map(lambda t: select(*t)),
        ),
        max_leaves=8,
    )


@st.composite
def cascades(draw):
    einsums = []
    tensors = {n: Tensor(n, r) for n, r in INPUTS.items()}
    shapes = dict(INPUTS)
    for k in range(draw(st.integers(1, 3))):
        out_ranks = draw(st.sampled_from([("M", "P"), ("P",), ("P", "E"), ("M",)]))
        expr = draw(exprs(shapes))
        name = f"T{k}"
        tensors[name] = Tensor(name, out_ranks)
        out = Access(name, tuple(INDEX[r] for r in out_ranks))
        where = draw(st.one_of(st.none(), predicates))
        einsums.append(Einsum(out, expr, draw(st.sampled_from(["sum", "max", "min"])), where,
                              draw(st.sampled_from(["", "a comment"]))))
        shapes[name] = out_ranks
    ranks = {r: Rank.of(r) for r in ("M", "P", "E")}
    c = Cascade("random", ranks, tensors, tuple(einsums), tuple(INPUTS), (einsums[-1].name,),
                params={"W": 5})
    # Einsums reducing nothing carry no reduction in canonical form
    canon = tuple(x if c.reduced_vars(x) else Einsum(x.output, x.expr, None, x.where, x.comment)
                  for x in c.einsums)
    return c.with_einsums(canon)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cascades())
def test_random_cascades_round_trip(c):
    text = format_cascade(c)
    back = parse_cascade(text)
    assert back.einsums == c.einsums, text
    assert format_cascade(back) == text


def test_every_builtin_round_trips():
    for name in einfuse.BUILTINS:
        c = einfuse.load_spec(name)
        text = format_cascade(c)
        back = parse_cascade(text)
        assert back.einsums == c.einsums, name
        assert format_cascade(back) == text
        assert back.attrs == c.attrs and back.params == c.params


def test_iterative_partitioned_cascade_round_trips(flash_text):
    c = parse_cascade(flash_text)
    assert format_cascade(parse_cascade(format_cascade(c))) == format_cascade(c)
    assert c.tensors["RM"].iterative == frozenset({"M1"})
    assert c.partitions[0].parent == "M" and c.ranks["M1"].extent == sympy.ceiling(size_symbol("M") / size_symbol("M0"))


def test_paper_style_implicit_sum_and_explicit_max():
    c = parse_cascade("""
        cascade paper
        ranks E, M, P
        input Q[E,P]
        input K[E,M]
        output GM[P]
        tensor QK[M,P]
        QK[m,p] = Q[e,p] * K[e,m]
        GM[p] = max(m) QK[m,p]
    """)
    assert c.einsums[0].reduce == "sum" and c.reduced_vars(c.einsums[0]) == [e]
    assert c.einsums[1].reduce == "max"
    assert "GM[p] = max(m) QK[m,p]" in format_cascade(c)


def test_empty_and_negative_constants_print_unambiguously():
    x = Access("X", (m, p))
    for expr in [binary("mul", x, Const(-2.0)), unary("neg", binary("add", x, Const(1.0))),
                 binary("sub", Const(-1.5), unary("neg", x)), Empty()]:
        c = Cascade("c", {r: Rank.of(r) for r in "MP"}, {"X": Tensor("X", ("M", "P")),
                    "O": Tensor("O", ("M", "P"))}, (Einsum(Access("O", (m, p)), expr, None),), ("X",), ("O",))
        validate(c)
        assert parse_cascade(format_cascade(c)).einsums == c.einsums
