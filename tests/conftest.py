"""Suite-wide setup: without a GPU, generated Triton kernels run in the Triton interpreter."""

import os

import pytest

try:
    import torch

    _HAS_CUDA = torch.cuda.is_available()
except ImportError:  # torch is optional for the IR and simulator tests
    _HAS_CUDA = False

if not _HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

FLASH = """cascade flash
ranks E, F, M, P, M1 = ceiling(M/M0), M0
params M0 = 8
partition M -> M1, M0
input Q[P,E]
input K[M,E]
input V[M,F]
output AV[P,F]
tensor BQK[M1,M0,P]
tensor LM[M1,P]
tensor RM[M1+1,P]
tensor SLN[M1,M0,P]
tensor SLD[M1,P]
tensor SLNV[M1,P,F]
tensor PRM[M1,P]
tensor SPD[M1,P]
tensor RD[M1+1,P]
tensor SPNV[M1,P,F]
tensor RNV[M1+1,P,F]
RM[0,p] = empty
RD[0,p] = empty
RNV[0,p,f] = empty
BQK[m1,m0,p] = Q[p,e] * K[m1*M0+m0,e] : m1*M0+m0 <= p - 3
LM[m1,p] = max(m0) BQK[m1,m0,p]
RM[m1+1,p] = max(RM[m1,p], LM[m1,p])
SLN[m1,m0,p] = exp(BQK[m1,m0,p] - RM[m1+1,p])
SLD[m1,p] = SLN[m1,m0,p]
SLNV[m1,p,f] = SLN[m1,m0,p] * V[m1*M0+m0,f]
PRM[m1,p] = exp(RM[m1,p] - RM[m1+1,p])
SPD[m1,p] = RD[m1,p] * PRM[m1,p]
RD[m1+1,p] = SLD[m1,p] + SPD[m1,p]
SPNV[m1,p,f] = RNV[m1,p,f] * PRM[m1,p]
RNV[m1+1,p,f] = SLNV[m1,p,f] + SPNV[m1,p,f]
AV[p,f] = RNV[M1,p,f] / RD[M1,p]
"""


@pytest.fixture
def flash_text() -> str:
    """FuseMax's 1-pass cascade (Cascade 5), written by hand, with a mask that empties rows 0..2."""
    return FLASH
