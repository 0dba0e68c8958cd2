"""a4_prompt_inversion's graded tests, with submissions written independently of the reference solution.

Correct code written differently gets full marks; a wrong projection costs exercise 1 only (the
loss and the inversion are tested with a reference projection swapped in); an inversion without
gradients (random prompts), without the straight-through projection, scored on the soft prompt, or
without the leading space loses the inversion points; calling course_lib loses the points.
"""
from pathlib import Path

import pytest

from gradeutil import run_graded, score

A4 = Path(__file__).resolve().parents[1] / "solutions" / "a4_prompt_inversion" / "a4_prompt_inversion.ipynb"
FULL = 10.0
INVERT_TESTS = {"test_invert", "test_invert_hidden"}

ALT_PROJECT = '''
def project(embeds, E, allowed=None):
    num = embeds.detach() @ E.T
    den = embeds.detach().norm(dim=-1, keepdim=True) * E.norm(dim=-1)
    dist = 1 - num / den
    if allowed is not None:
        dist[..., ~allowed] = float("inf")
    return torch.argmin(dist, dim=-1)
'''
ALT_SOFT_LOSS = '''
def soft_loss(model, soft, target_ids, lam, allowed=None):
    W = model.get_input_embeddings().weight
    t = list(torch.as_tensor(target_ids).tolist())
    x = torch.cat([soft] + [W[t[j]].expand(soft.shape[0], 1, -1) for j in range(len(t) - 1)], dim=1)
    logp = model(inputs_embeds=x).logits.log_softmax(-1)
    n = soft.shape[1]
    ce = -sum(logp[:, n - 1 + j, t[j]] for j in range(len(t))) / len(t)
    near = W[project(soft, W, allowed)]
    return ce + lam * torch.linalg.vector_norm(soft - near, dim=-1).mean(-1)
'''
ALT_INVERT = '''
def invert(model, tok, word, n_tokens=4, n_restarts=8, steps=25, lr=0.2, seed=0):
    W = model.get_input_embeddings().weight
    target = tok(" " + word, add_special_tokens=False)["input_ids"]
    g = torch.Generator().manual_seed(seed)
    candidates = torch.arange(W.shape[0])[allowed]
    start = candidates[torch.randint(len(candidates), (n_restarts, n_tokens), generator=g)]
    soft = torch.nn.Parameter(W[start].clone())
    opt = torch.optim.Adam([soft], lr=lr)
    best = {r: (float("inf"), start[r].clone()) for r in range(n_restarts)}
    for _ in range(steps):
        ids = project(soft, W, allowed)
        loss = soft_loss(model, soft + (W[ids] - soft).detach(), torch.tensor(target), 0.0)
        for r in range(n_restarts):
            if loss[r].item() < best[r][0]:
                best[r] = (loss[r].item(), ids[r].clone())
        opt.zero_grad(); loss.sum().backward(); opt.step()
    ids = torch.stack([best[r][1] for r in range(n_restarts)])
    with torch.no_grad():
        full = torch.cat([ids, torch.tensor(target[:-1], dtype=torch.long).expand(n_restarts, -1)], 1)
        lp = model(input_ids=full).logits.log_softmax(-1)
        p = torch.exp(sum(lp[:, n_tokens - 1 + j, target[j]] for j in range(len(target))))
    return {"ids": ids, "text": tok.batch_decode(ids), "p": p}
'''



EUCLID_PROJECT = '''
def project(embeds, E, allowed=None):
    d = torch.cdist(embeds.detach().reshape(-1, E.shape[1]), E)
    if allowed is not None:
        d[:, ~allowed] = float("inf")
    return d.argmin(-1).view(embeds.shape[:-1])
'''
FORBIDDEN_PROJECT = '''
from course_lib.methods.prompts import project_to_tokens
def project(embeds, E, allowed=None):
    return project_to_tokens(embeds, E, allowed=allowed)
'''
SOFT_SCORED = ALT_INVERT.replace(
    "    ids = torch.stack([best[r][1] for r in range(n_restarts)])\n",
    "    ids = torch.stack([best[r][1] for r in range(n_restarts)])\n"
    "    with torch.no_grad():\n"
    "        p_soft = torch.exp(-soft_loss(model, soft, torch.tensor(target), 0.0) * len(target))\n"
    "    return {'ids': ids, 'text': tok.batch_decode(ids), 'p': p_soft}\n",
)
NO_SPACE = ALT_INVERT.replace('tok(" " + word,', "tok(word,")
# no gradient at all: the same number of random prompts, the best one kept (scored honestly)
RANDOM_SEARCH = '''
def invert(model, tok, word, n_tokens=4, n_restarts=8, steps=25, lr=0.2, seed=0):
    W = model.get_input_embeddings().weight
    t = tok(" " + word, add_special_tokens=False)["input_ids"]
    g = torch.Generator().manual_seed(seed)
    pool = allowed.nonzero().squeeze(1)
    best_p, best_ids = torch.full((n_restarts,), -1.0), None
    best_ids = pool[torch.randint(0, len(pool), (n_restarts, n_tokens), generator=g)]
    for _ in range(steps + 1):
        ids = pool[torch.randint(0, len(pool), (n_restarts, n_tokens), generator=g)]
        x = torch.cat([ids, torch.tensor(t[:-1], dtype=torch.long).expand(n_restarts, -1)], 1)
        with torch.no_grad():
            lp = model(input_ids=x).logits.log_softmax(-1)
        p = torch.exp(sum(lp[:, n_tokens - 1 + j, t[j]] for j in range(len(t))))
        better = p > best_p
        best_p, best_ids = torch.where(better, p, best_p), torch.where(better[:, None], ids, best_ids)
    return {"ids": best_ids, "text": tok.batch_decode(best_ids), "p": best_p}
'''
# optimises the free soft prompt (no straight-through), projects only to report
NO_STRAIGHT_THROUGH = '''
def invert(model, tok, word, n_tokens=4, n_restarts=8, steps=25, lr=0.2, seed=0):
    W = model.get_input_embeddings().weight
    t = torch.tensor(tok(" " + word, add_special_tokens=False)["input_ids"])
    g = torch.Generator().manual_seed(seed)
    pool = allowed.nonzero().squeeze(1)
    soft = W[pool[torch.randint(0, len(pool), (n_restarts, n_tokens), generator=g)]].detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([soft], lr=lr)
    for _ in range(steps):
        loss = soft_loss(model, soft, t, 0.0)
        opt.zero_grad(); loss.sum().backward(); opt.step()
    ids = project(soft, W, allowed)
    x = torch.cat([ids, t[:-1].expand(n_restarts, -1)], 1)
    with torch.no_grad():
        lp = model(input_ids=x).logits.log_softmax(-1)
    p = torch.exp(sum(lp[:, n_tokens - 1 + j, t[j]] for j in range(len(t))))
    return {"ids": ids, "text": tok.batch_decode(ids), "p": p}
'''


def _failing(res):
    return {k for k, r in res.items() if not r.passed}


def test_correct_but_different_code_gets_full_marks():
    res = run_graded(A4, {"project": ALT_PROJECT, "soft_loss": ALT_SOFT_LOSS, "invert": ALT_INVERT})
    assert score(res) == (FULL, FULL), {k: r.error for k, r in res.items() if not r.passed}


def test_a_euclidean_projection_costs_exercise_1_only_and_soft_scoring_costs_the_inversion():
    res = run_graded(A4, {"project": EUCLID_PROJECT, "invert": SOFT_SCORED})
    assert _failing(res) == {"test_project"} | INVERT_TESTS, {k: r.error for k, r in res.items()}


def test_calling_course_lib_loses_the_points():
    res = run_graded(A4, {"project": FORBIDDEN_PROJECT}, stop_after="test_project")
    assert not res["test_project"].passed and "write the method yourself" in res["test_project"].error


@pytest.mark.parametrize("name", ["random search", "no straight-through", "no leading space"])
def test_inversions_that_do_not_work_lose_the_inversion_points(name):
    code = {"random search": RANDOM_SEARCH, "no straight-through": NO_STRAIGHT_THROUGH, "no leading space": NO_SPACE}[name]
    res = run_graded(A4, {"invert": code}, stop_after="test_invert")  # the visible inversion test is enough
    assert _failing(res) & INVERT_TESTS, f"{name} kept the inversion points"
    assert not _failing(res) - INVERT_TESTS, {k: r.error for k, r in res.items() if not r.passed}


def test_an_invert_written_for_the_visible_case_only_loses_the_visible_points():
    # a working search for 'girl' (the visible case), none for any other word: the hidden case inside test_invert takes its points
    code = (ALT_INVERT.replace("def invert(", "def _good_invert(") + RANDOM_SEARCH.replace("def invert(", "def _bad_invert(")
            + "\ndef invert(model, tok, word, *args, **kwargs):\n"
            + "    return (_good_invert if word == 'girl' else _bad_invert)(model, tok, word, *args, **kwargs)\n")
    res = run_graded(A4, {"invert": code}, stop_after="test_invert")
    assert not res["test_invert"].passed and res["test_invert"].error.startswith("AssertionError"), res["test_invert"].error


# --- the inversion bar's false rejections (issue 24) ------------------------------------------------------------------
def _cell(grade_id):
    from gradeutil import cells, nbgrader_meta

    return next(c.source for c in cells(A4) if nbgrader_meta(c).get("grade_id") == grade_id)


def test_the_inversion_bound_written_beside_the_bar():
    from math import comb

    # the best returned is >= 0.99 x the best of the 4 random starts (the keep-the-best check); the 4 starts and the 128
    # bar prompts are exchangeable, so all 4 rank below the bar's 2nd smallest with probability C(5, 4) / C(132, 4)
    p = comb(1 + 4, 4) / comb(128 + 4, 4)
    assert comb(132, 4) == 12_082_785 and 4.1e-7 < p < 4.2e-7 <= 1e-6, p
    for gid in ("test_invert", "test_invert_hidden"):
        src = _cell(gid)
        assert "_random_kth(word, 128, 2, 4," in src and "4.2e-7" in src, f"{gid}: the bound above is for the 2nd of 128"
        assert "RESTARTS, STEPS = 2" not in src, f"{gid}: the bound needs 4 restarts in every case"


# A correct PEZ written differently again, its starts drawn another way (multinomial over the allowed tokens, another
# seed): the bar judges it on other random starts than the reference solution's.
OTHER_STARTS = ALT_INVERT.replace(
    "    start = candidates[torch.randint(len(candidates), (n_restarts, n_tokens), generator=g)]\n",
    "    g.manual_seed(seed + OFFSET)\n"
    "    start = torch.multinomial(allowed.float(), n_restarts * n_tokens, replacement=True, generator=g).view(n_restarts, -1)\n",
)
# keeps the last projection, not each restart's best
LAST_NOT_BEST = ALT_INVERT.replace("    ids = torch.stack([best[r][1] for r in range(n_restarts)])\n",
                                   "    ids = project(soft, W, allowed)\n")


@pytest.mark.parametrize("offset", [101, 202])
def test_a_correct_invert_from_other_random_starts_gets_the_inversion_points(offset):
    assert "OFFSET" in OTHER_STARTS, "OTHER_STARTS no longer replaces ALT_INVERT's start"
    code = OTHER_STARTS.replace("OFFSET", str(offset))
    res = run_graded(A4, {"invert": code})
    assert not _failing(res), {k: r.error for k, r in res.items() if not r.passed}


def test_an_invert_that_returns_the_last_projection_loses_the_inversion_points():
    res = run_graded(A4, {"invert": LAST_NOT_BEST}, stop_after="test_invert")
    assert _failing(res) == {"test_invert"}, {k: r.error for k, r in res.items()}
    assert "best projected prompt seen so far" in res["test_invert"].error, res["test_invert"].error
