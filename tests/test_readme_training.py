"""The README's training example runs as written (CPU: Triton interpreter) and its loss goes down."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_training_example_loss_goes_down():
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Training"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    losses = scope["losses"]
    assert all(l == l for l in losses)  # no NaN
    assert losses[-1] < 0.8 * losses[0]
