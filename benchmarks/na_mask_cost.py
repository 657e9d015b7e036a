"""Where a neighbourhood kernel's time goes: the same generated kernel with parts of its mask work
patched out (timings only; the patched outputs are wrong by design).

    python benchmarks/na_mask_cost.py

Variants: ``base`` (as generated), ``one_term`` (the predicate replaced by one compare, the cost of the
other terms), ``nomask`` (partial tiles run the unmasked path: the cost of the whole mask path),
``tree_all/two/one`` (the predicate's terms chosen per key tile by a branch, with a fake choice of
all three, two or one of them: what skipping terms known true on a tile pair could save), ``span_nobounds`` (span key boxes with the bounds checks removed and positions clamped: the cost of
the bounds checks that span tiles need).
"""

from __future__ import annotations

import re
import sys

import torch

import einfuse
import einfuse.codegen.triton.runtime as rt
from einfuse.codegen.autotune import time_config


def _wrapped(s):
    depth = 0
    for i, ch in enumerate(s):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0 and i < len(s) - 1:
            return False
    return True


def split_top_and(code: str):
    """'(A & B & C)' -> ['A', 'B', 'C'] at paren depth 1."""
    inner = code
    while inner.startswith("(") and inner.endswith(")") and _wrapped(inner):
        inner = inner[1:-1]
    parts, depth, cur = [], 0, ""
    i = 0
    while i < len(inner):
        ch = inner[i]
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if depth == 0 and inner.startswith(" & ", i):
            parts.append(cur)
            cur = ""
            i += 3
            continue
        cur += ch
        i += 1
    parts.append(cur)
    return parts


def tree_patch(text: str, fake_need: str) -> str:
    m = re.search(r"def _keep\(qi, ki, h, b, N_Q, N_KV, H\):\n    \"\"\".*?\"\"\"\n    return ([^\n]*)\n", text, re.S)
    terms = split_top_and(m.group(1))
    T = len(terms)
    lines = ["@triton.jit", "def _keep_need(qi, ki, h, b, N_Q, N_KV, H, need):"]
    first = True
    for pat in range((1 << T) - 1, 0, -1):
        conj = " & ".join(terms[t] for t in range(T) if pat >> t & 1)
        kw = "if" if first else "elif"
        lines.append(f"    {kw} need == {pat}:\n        keep = {conj}")
        first = False
    lines.append("    else:\n        keep = " + " & ".join(terms))
    lines.append("    return keep\n")
    text = text.replace("\n\n@triton.jit\ndef _tile(", "\n\n" + "\n".join(lines) + "\n\n@triton.jit\ndef _tile(", 1)
    text = text.replace("keep = _keep(qi, ki, h, b, N_Q, N_KV, H)",
                        f"keep = _keep_need(qi, ki, h, b, N_Q, N_KV, H, {fake_need})")
    return text


PATCHES = {
    "base": [],
    "one_term": [("keep = _keep(qi, ki, h, b, N_Q, N_KV, H)", "keep = (ki - qi).to(tl.uint32) < 4000000000")],
    "nomask": [("N_Q, N_KV, H, True, BLOCK_N", "N_Q, N_KV, H, False, BLOCK_N")],
    "span_nobounds": [("if MASKED and not EVEN_KV:", "if False:"), ("if not EVEN_KV:  #", "if False:  #"),
                      ("    kpos, kvalid = _k_tile(j, offs_n, N_KV, BLOCK_N, BK0, BK1, BK2)\n",
                       "    kpos, kvalid = _k_tile(j, offs_n, N_KV, BLOCK_N, BK0, BK1, BK2)\n"
                       "    kpos = tl.minimum(kpos, N_KV - 1)\n")],
}


def run(spec: str, shape: tuple[int, int, int, int], order: str, variant: str, cfg: tuple[int, ...]) -> None:
    original = rt.emit_module

    def patched(*a, **k):
        text = original(*a, **k)
        if variant.startswith("tree"):  # per-tile choice of predicate terms (fake choice: timing only)
            need = {"tree_all": "7", "tree_two": "(7 ^ (1 << (j % 3)))", "tree_one": "(1 << (j % 3))"}[variant]
            return tree_patch(text, need)
        for old, new in PATCHES[variant]:
            assert old in text, (variant, old)
            text = text.replace(old, new)
        return text

    rt.emit_module = patched
    try:
        f = einfuse.compile(spec, torch_op=False, decode=False)
        B, H, N, D = shape
        q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        opts = dict(block_m=cfg[0], block_n=cfg[1], num_warps=cfg[2], num_stages=cfg[3], tile_order=order)
        f(q, k, v, **opts)
        ms = time_config(lambda: f(q, k, v, **opts))
        t = f.kernel.last_tables
        print(f"{spec} {order:5s} {variant:14s} {cfg}: {ms:.4f} ms (visited {t.visited_fraction:.3f}, "
              f"k_box {t.k_box})", flush=True)
    finally:
        rt.emit_module = original


def main() -> None:
    s3, s2 = "na3d:shape=16x32x32,kernel=7,head_dim=64", "na2d:shape=96x96,kernel=13,head_dim=64"
    sh3, sh2 = (2, 8, 16384, 64), (4, 8, 9216, 64)
    plan = [(s3, sh3, "box", v, (64, 64, 4, 3)) for v in ("base", "one_term", "nomask", "tree_all", "tree_two",
                                                         "tree_one")]
    plan += [(s3, sh3, "span", v, c) for v in ("base", "span_nobounds") for c in ((64, 64, 4, 3), (64, 128, 4, 3))]
    plan += [(s2, sh2, "box", v, (64, 64, 4, 3)) for v in ("base", "nomask", "tree_all")]
    plan += [(s2, sh2, "span", "span_nobounds", (64, 64, 4, 3))]
    only = sys.argv[1:]
    for item in plan:
        if not only or item[3] in only:
            run(*item)


if __name__ == "__main__":
    main()
