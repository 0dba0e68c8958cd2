"""Prompt inversion benchmarks on smollm2-135m (run with `make bench`; figures are printed).

* ours (course_lib GCG) vs nanogcg 0.3.0 on the same targets and budget: success rate, p(target), wall time;
* time per soft-prompt step vs a plain forward+backward of the same batch (target <= 1.15x);
* time per 64-candidate GCG step (target <= 2 s on 2 CPU cores);
* model load time and peak memory.
"""
from __future__ import annotations

import copy
import logging
import resource
import statistics
import time

import pytest
import torch
import torch.nn.functional as F

from course_lib.methods import prompts as P

TARGETS = [" the", " Paris", " girl"]
BUDGET = dict(n_tokens=4, steps=8, search_width=64, topk=64, init="x x x x")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.fixture(scope="module")
def smol():
    from course_lib.zoo import load_model

    before = _rss_mb()
    t0 = time.perf_counter()
    model, tok = load_model("smollm2-135m", device="cpu")
    print(f"\n[prompts] smollm2-135m load: {time.perf_counter() - t0:.2f} s, peak RSS {_rss_mb():.0f} MB (was {before:.0f} MB)")
    return model, tok


def test_soft_step_vs_plain_forward_backward(smol):
    """Each soft-prompt (or PEZ) step is followed, through the callback, by one plain
    forward+backward of the same batch, each timed on its own: the two are measured side by
    side, so a drift in machine speed (other jobs, frequency) hits both alike. Medians over the
    steps; the first step (set-up) and the last (final projected evaluation) are left out."""
    model, tok = smol
    allowed = P.allowed_tokens(tok, P.token_embeddings(model).shape[0])
    E = P.token_embeddings(model)
    R, n, steps = 4, 5, 30
    t = P.encode_target(tok, " Paris")
    x = E[torch.randint(0, E.shape[0], (R, n), generator=torch.Generator().manual_seed(0))].clone().requires_grad_(True)

    def plain():
        loss = F.cross_entropy(model(inputs_embeds=x, logits_to_keep=1).logits[:, -1], t.repeat(R))
        loss.backward()

    def side_by_side(method, **kw):
        step_s, plain_s, mark = [], [], [time.perf_counter()]

        def callback(step, loss):
            step_s.append(time.perf_counter() - mark[0])
            t0 = time.perf_counter()
            plain()
            plain_s.append(time.perf_counter() - t0)
            mark[0] = time.perf_counter()

        method(model, tok, " Paris", n_tokens=n, n_restarts=R, steps=steps, allowed=allowed, progress=False, callback=callback, **kw)
        step, base = statistics.median(step_s[1:-1]), statistics.median(plain_s[1:-1])
        return step, base, step / base

    plain()  # warm-up
    rows = [("soft prompt, step only (eval_every off)", *side_by_side(P.soft_prompt, eval_every=10**9)),
            ("soft prompt, default eval_every=5 (amortised)", *side_by_side(P.soft_prompt)),
            ("PEZ", *side_by_side(P.pez))]
    print(f"\n[prompts] per step, batch {R}x{n} ({steps} steps, medians; plain = model(inputs_embeds, logits_to_keep=1) + backward):")
    for name, step, base, ratio in rows:
        print(f"  {name:48} {step:.3f} s vs plain {base:.3f} s = {ratio:.2f}x")
    print("  target: soft-prompt step <= 1.15x plain")
    t0 = time.perf_counter()
    P.gcg(model, tok, " Paris", n_tokens=n, steps=3, search_width=64, topk=64, allowed=allowed, progress=False)
    print(f"[prompts] GCG step with 64 candidates: {(time.perf_counter() - t0) / 3:.2f} s (target <= 2 s on 2 CPU cores)")


def test_gcg_ours_vs_nanogcg(smol):
    nanogcg = pytest.importorskip("nanogcg")
    logging.getLogger("nanogcg").setLevel(logging.ERROR)
    model, tok = smol
    allowed = P.allowed_tokens(tok, P.token_embeddings(model).shape[0])
    ntok = copy.deepcopy(tok)
    ntok.chat_template = "{% for message in messages %}{{ message['content'] }}{% endfor %}"  # the bare prompt
    rows = []
    for target in TARGETS:
        t0 = time.perf_counter()
        ours = P.gcg(model, tok, target, **BUDGET, allowed=allowed, seed=0, progress=False)
        t_ours = time.perf_counter() - t0
        cfg = nanogcg.GCGConfig(num_steps=BUDGET["steps"], optim_str_init=BUDGET["init"], search_width=BUDGET["search_width"],
                                topk=BUDGET["topk"], use_prefix_cache=False, seed=0, verbosity="ERROR")
        t0 = time.perf_counter()
        theirs = nanogcg.run(model, ntok, "{optim_str}", target, cfg)
        t_theirs = time.perf_counter() - t0
        T = len(P.encode_target(tok, target))
        p_theirs = float(P.p_target(model, tok, theirs.best_string, target))  # re-scored as text, like ours
        rows.append(
            (target, float(ours.p_target.max()), t_ours, p_theirs, float(torch.exp(torch.tensor(-theirs.best_loss * T))), t_theirs)
        )
    print("\n[prompts] GCG, same budget (4 tokens, 8 steps x 64 candidates, init 'x x x x'):")
    print(f"  {'target':10} {'ours p':>8} {'ours s':>7} {'nanogcg p':>10} {'(its loss)':>10} {'nanogcg s':>9} {'time ratio':>10}")
    for target, po, to, pt, pl, tt in rows:
        print(f"  {target!r:10} {po:8.3f} {to:7.1f} {pt:10.3f} {pl:10.3f} {tt:9.1f} {to / tt:10.2f}")
    ok_ours = sum(r[1] >= 0.5 for r in rows)
    ok_theirs = sum(r[3] >= 0.5 for r in rows)
    print(f"  success (p >= 0.5): ours {ok_ours}/{len(rows)}, nanogcg {ok_theirs}/{len(rows)}; "
          f"total time ratio ours/nanogcg {sum(r[2] for r in rows) / sum(r[5] for r in rows):.2f}")
