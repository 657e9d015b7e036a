"""Bad cascades are rejected with one-line errors naming the Einsum and the rank or tensor at fault."""

import pytest

from einfuse.errors import ParseError, ValidationError
from einfuse.ir import parse_cascade

HEADER = """cascade bad
ranks E, F, M, P
input Q[P,E]
input K[M,E]
input V[M,F]
output O[P,F]
tensor QK[M,P]
"""


def parse(body: str):
    return parse_cascade(HEADER + body)


def test_valid_header_parses():
    c = parse("QK[m,p] = Q[p,e] * K[m,e]\nO[p,f] = QK[m,p] * V[m,f]\n")
    assert [e.name for e in c.einsums] == ["QK", "O"]


@pytest.mark.parametrize("body, words", [
    ("QK[m,p] = Q[p,e] * Kx[m,e]\nO[p,f] = QK[m,p] * V[m,f]\n", ["QK", "undefined tensor Kx", "did you mean K"]),
    ("QK[m,p] = Q[p,e] * K[m,x]\nO[p,f] = QK[m,p] * V[m,f]\n", ["QK", "unknown rank index x"]),
    ("QK[m,p] = Q[e,p] * K[m,e]\nO[p,f] = QK[m,p] * V[m,f]\n", ["QK", "rank mismatch", "Q"]),
    ("QK[m,p] = Q[p,e] * K[m]\nO[p,f] = QK[m,p] * V[m,f]\n", ["QK", "K has 2 ranks", "indexed with 1"]),
    ("QK[m,p] = Q[p,e] * K[m,e] * O[p,f]\nO[p,f] = QK[m,p] * V[m,f]\n", ["cycle", "QK"]),
    ("QK[m,p] = Q[p,e] * K[m,e]\n", ["output O is never computed"]),
    ("QK[m,p] = Q[p,e] * K[m,e]\nO[p,f] = QK[m,p] * V[m,f] * idx(Z)\n", ["O", "unknown size or parameter Z"]),
    ("Q[p,e] = K[p,e]\nQK[m,p] = Q[p,e] * K[m,e]\nO[p,f] = QK[m,p] * V[m,f]\n", ["writes input tensor Q"]),
])
def test_invalid_cascades_name_the_culprit(body, words):
    with pytest.raises(ValidationError) as info:
        parse(body)
    msg = str(info.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


@pytest.mark.parametrize("header_change, body, words", [
    (None, "QK[m,p] = Q[p,e] * K[m,e] : m <= 9**9**9\nO[p,f] = QK[m,p] * V[m,f]\n", "too large to evaluate"),
    (None, "QK[m,p] = Q[p,e] * K[m,e] * idx(2**2**2**2**2)\nO[p,f] = QK[m,p] * V[m,f]\n", "too large"),
    (None, "QK[m,p] = Q[p,e] * K[m,e] * idx(().__class__)\nO[p,f] = QK[m,p] * V[m,f]\n", "is not part of"),
    (None, "QK[m,p] = Q[p,e] * K[m,e] : m <= __import__('os').getpid()\nO[p,f] = QK[m,p] * V[m,f]\n",
     "is not part of"),
    ("ranks E, F, M, P, M1 = quit()", "QK[m,p] = Q[p,e] * K[m,e]\nO[p,f] = QK[m,p] * V[m,f]\n", "'quit' is not a size"),
    ("ranks E, F, M, P, M1 = 10**10**6", "QK[m,p] = Q[p,e] * K[m,e]\nO[p,f] = QK[m,p] * V[m,f]\n", "too large"),
])
def test_index_and_size_expressions_are_arithmetic_only(header_change, body, words):
    """The text form is data: nothing in it runs as Python, and no power of numbers takes minutes."""
    text = HEADER if header_change is None else HEADER.replace("ranks E, F, M, P", header_change)
    with pytest.raises(ParseError, match=words):
        parse_cascade(text + body)


def test_a_tensor_computed_twice_is_rejected():
    body = "QK[m,p] = Q[p,e] * K[m,e]\nO[p,f] = QK[m,p] * V[m,f]\nO[p,f] = QK[m,p] * V[m,f] * 2\n"
    with pytest.raises(ValidationError, match="tensor O is computed by 2 Einsums"):
        parse(body)


def test_iterative_tensor_has_an_initial_value_and_a_recurrence(flash_text):
    assert parse_cascade(flash_text).name == "flash"  # RM[0,p] = empty and RM[m1+1,p] = ... both write RM


@pytest.mark.parametrize("body, words", [
    ("QK[m,p] = max(z) Q[p,e] * K[m,e]\nO[p,f] = QK[m,p] * V[m,f]\n", ["reduction over rank z"]),
    ("QK[m,p] = max(m) Q[p,e] * K[m,e]\nO[p,f] = QK[m,p] * V[m,f]\n", ["QK", "max(m)", "(e)"]),
    ("QK[m,p] = Q[p,e] * exp(K[m,e], Q[p,e])\nO[p,f] = QK[m,p] * V[m,f]\n", ["exp takes 1 argument"]),
    ("QK[m,p] = Q[p,e] * foo(K[m,e])\nO[p,f] = QK[m,p] * V[m,f]\n", ["unknown function 'foo'"]),
    ("QK[m,p] = Q[p,e] * (K[m,e]\nO[p,f] = QK[m,p] * V[m,f]\n", ["expected ')'"]),
    ("QK[m,p] = Q[p,e] * K[m,e] : m <=\nO[p,f] = QK[m,p] * V[m,f]\n", ["cannot parse index expression"]),
    ("tensor QK[M,P]\nQK[m,p] = Q[p,e] * K[m,e]\nO[p,f] = QK[m,p] * V[m,f]\n", ["tensor QK is declared twice"]),
    ("input V[M,F]\nQK[m,p] = Q[p,e] * K[m,e]\nO[p,f] = QK[m,p] * V[m,f]\n", ["tensor V is declared twice"]),
    ("ranks P\nQK[m,p] = Q[p,e] * K[m,e]\nO[p,f] = QK[m,p] * V[m,f]\n", ["rank P is declared twice"]),
    ("params W = 1, W = 2\nQK[m,p] = Q[p,e] * K[m,e]\nO[p,f] = QK[m,p] * V[m,f]\n", ["param W is declared twice"]),
])
def test_parse_errors_are_one_line(body, words):
    with pytest.raises(ParseError) as info:
        parse(body)
    msg = str(info.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


def test_recurrence_must_shift_iterative_rank(flash_text):
    bad = flash_text.replace("RM[m1+1,p] = max(RM[m1,p], LM[m1,p])", "RM[m1+1,p] = max(RM[m1+1,p], LM[m1,p])")
    with pytest.raises(ValidationError, match="RM"):
        parse_cascade(bad)


def test_non_iterative_self_reference_is_a_cycle():
    with pytest.raises(ValidationError, match="cycle"):
        parse("QK[m,p] = Q[p,e] * K[m,e] + QK[m,p]\nO[p,f] = QK[m,p] * V[m,f]\n")


def test_reduction_needs_an_operator():
    from einfuse.ir import Access, Cascade, Einsum, Rank, Tensor, validate
    from einfuse.ir.ranks import index_symbol

    m, p = index_symbol("m"), index_symbol("p")
    c = Cascade("c", {r: Rank.of(r) for r in "MP"}, {"X": Tensor("X", ("M", "P")), "Y": Tensor("Y", ("P",))},
                (Einsum(Access("Y", (p,)), Access("X", (m, p)), reduce=None),), ("X",), ("Y",))
    with pytest.raises(ValidationError, match="Y.*m.*no reduction"):
        validate(c)
