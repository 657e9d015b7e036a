"""A deterministic synthetic language and a short training run, so that benchmarks/hf_model.py measures
token agreement on a model that is sure of its next token (issue 18).

With random weights every logit is nearly equal (sdpa's top-2 gap ~0.16 at bf16 spacing 0.06), so
bf16 rounding alone flips greedy tokens and a free-running generation diverges after its first
flip: eager attention agreed with sdpa on only ~50 % of steps. A model trained for a few hundred
steps on a language whose next token is determined by the context has logit margins of several
units, so a flip means an attention error, not a tie.

The language (token ids below ``vocab_used``) has two kinds of rows, alternating in a batch, both
needing attention (no token is predictable from the current token alone):

* **copy**: a random pattern of ``period`` distinct tokens (``period`` drawn per row) repeated to the
  row's end; from position ``period`` on each token is the one ``period`` places back (induction:
  find the last occurrence of the current token, copy its successor);
* **skip**: two random tokens, then ``x[t] = T[x[t-2]]`` for a fixed random permutation ``T`` (the
  language's only parameter): each token is a function of the token two places back.

Training uses the model's sdpa attention with bf16 autocast over fp32 weights (AdamW, warm-up, clipped
gradients), on rows as long as the generation's prompt plus its new tokens, so generation needs no
length extrapolation; the loss is taken on predictable positions only.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

KINDS = ("copy", "skip")


@dataclass(frozen=True)
class Language:
    """The language: tokens ``0 .. vocab_used-1``, copy periods in ``[period_min, period_max]``, the
    skip rows' permutation ``perm`` (a CPU int64 tensor) and the kinds rows cycle through."""

    vocab_used: int
    period_min: int
    period_max: int
    perm: Any
    kinds: tuple[str, ...] = KINDS

    @staticmethod
    def make(vocab: int, vocab_used: int, period_min: int, period_max: int, seed: int,
             kinds: tuple[str, ...] = KINDS) -> Language:
        import torch

        used = min(vocab, vocab_used)
        if not 2 <= period_min <= period_max <= used:
            raise SystemExit(f"copy periods {period_min}..{period_max} need 2 <= min <= max <= {used} tokens")
        if not kinds or set(kinds) - set(KINDS):
            raise SystemExit(f"row kinds {','.join(kinds)}: choose among {','.join(KINDS)}")
        perm = torch.randperm(used, generator=torch.Generator().manual_seed(seed))
        return Language(used, period_min, period_max, perm, tuple(kinds))

    def sample(self, batch: int, length: int, generator: Any) -> tuple[Any, Any, list[str]]:
        """``batch`` rows of ``length`` tokens (CPU int64), the first predictable position of each row,
        and each row's kind (row r is ``kinds[r % len(kinds)]``: copy, skip, copy, ... by default)."""
        import torch

        if length <= self.period_max and "copy" in self.kinds:
            raise SystemExit(f"rows of {length} tokens cannot hold a copy period of {self.period_max} and its repeat")
        ids = torch.empty((batch, length), dtype=torch.int64)
        start = torch.empty((batch,), dtype=torch.int64)
        kinds = []
        for r in range(batch):
            kind = self.kinds[r % len(self.kinds)]
            kinds.append(kind)
            if kind == "copy":
                p = int(torch.randint(self.period_min, self.period_max + 1, (1,), generator=generator))
                pattern = torch.randperm(self.vocab_used, generator=generator)[:p]
                ids[r] = pattern.repeat(math.ceil(length / p))[:length]
                start[r] = p
            else:
                perm = self.perm.tolist()
                row = torch.randint(0, self.vocab_used, (2,), generator=generator).tolist()
                for t in range(2, length):  # Python ints: ~100x faster than indexing tensors
                    row.append(perm[row[t - 2]])
                ids[r] = torch.tensor(row[:length])
                start[r] = 2
        return ids, start, kinds


def predictable(ids: Any, start: Any) -> Any:
    """Boolean (B, L): positions whose token the language determines (position >= the row's start)."""
    import torch

    pos = torch.arange(ids.shape[1], device=ids.device)[None, :]
    return pos >= start.to(ids.device)[:, None]


def train(model: Any, lang: Language, *, steps: int, batch: int, length: int, lr: float, seconds: float,
          seed: int, device: str, target_acc: float = 0.999) -> dict[str, Any]:
    """Train ``model`` (fp32 weights, sdpa attention) in place; stop after ``steps`` steps, ``seconds``
    seconds, or once two checks in a row predict at least ``target_acc`` of the predictable tokens.
    Returns the loss and accuracy curve and why it stopped."""
    import torch

    cuda = device == "cuda"
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0,
                            **({"fused": True} if cuda else {}))
    warm = max(1, min(30, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    model.train()
    curve: list[dict[str, float]] = []
    reason, good, t0 = "steps", 0, time.perf_counter()
    step = 0
    for step in range(1, steps + 1):
        ids, start, _ = lang.sample(batch, length, gen)
        ids = ids.to(device)
        labels = ids.masked_fill(~predictable(ids, start), -100)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
            out = model(ids, labels=labels, use_cache=False)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 10 == 0 or step == steps:
            with torch.no_grad():
                hit = out.logits[:, :-1].argmax(-1) == ids[:, 1:]
                acc = float(hit[labels[:, 1:] != -100].float().mean())
            loss = float(out.loss.detach())
            curve.append({"step": step, "loss": loss, "accuracy": acc, "s": round(time.perf_counter() - t0, 2)})
            print(f"    train step {step:4d} loss {loss:.4f} accuracy {acc:.4f}", flush=True)
            good = good + 1 if acc >= target_acc else 0
            if good >= 2:
                reason = f"accuracy >= {target_acc} twice"
                break
            if time.perf_counter() - t0 > seconds:
                reason = f"time budget {seconds:g} s"
                break
    del opt
    model.eval()
    model.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
    return {"steps": step, "seconds": round(time.perf_counter() - t0, 2), "stopped": reason, "lr": lr,
            "batch": batch, "length": length, "final_loss": curve[-1]["loss"] if curve else None,
            "final_accuracy": curve[-1]["accuracy"] if curve else None, "curve": curve}
