"""The training lens's tiny transformer: wall time until an induction head forms, in one run.

- time to the induction threshold (best layer-2 head's induction score > 0.5 on the [r, r]
  evaluation sequences), default config, seed 0;
- the lens's overhead: the full run (a checkpoint and its evaluation every 10 steps) vs the same
  training steps with nothing kept (the floor).

Run with ``make bench``; on a shared CPU compare the ratio, not absolute times.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

THRESHOLD = 0.5


def _bare_training(config, seed: int) -> float:
    """The same optimisation steps with no checkpoints and no evaluation: seconds."""
    from course_lib.methods import training_lens as TL

    c = config
    torch.manual_seed(seed)
    model = TL.AttnOnlyTransformer(c.vocab, c.d_model, c.n_layers, c.n_heads, c.seq_len)
    opt = torch.optim.AdamW(model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
    g = torch.Generator().manual_seed(seed + 1)
    t = time.perf_counter()
    for _ in range(c.steps):
        x = TL.periodic_tokens(c.batch, c.seq_len, c.vocab, min_period=c.min_period, max_period=c.max_period, generator=g)
        loss = F.cross_entropy(model(x[:, :-1]).reshape(-1, c.vocab), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t


def test_time_to_induction_threshold():
    from course_lib.methods import training_lens as TL

    config = TL.TrainConfig()
    run = TL.train_induction(config, seed=0, progress=False)
    step = run.first_step_above(THRESHOLD)
    assert step is not None, f"no layer-2 head passed {THRESHOLD} in {config.steps} steps"
    to_threshold = run.seconds_at[run.steps.index(step)]
    floor = _bare_training(config, seed=0)
    print(f"\ntraining lens: induction score > {THRESHOLD} at step {step} of {config.steps}, after {to_threshold:.1f} s "
          f"(torch threads: {torch.get_num_threads()}); full run {run.seconds:.1f} s with {len(run.steps)} checkpoints, "
          f"bare training {floor:.1f} s: overhead x{run.seconds / floor:.2f}")
