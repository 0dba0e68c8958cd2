"""Prompt inversion (course_lib.methods.prompts).

Unit properties run on tiny randomly initialised causal LMs (GPT-2 and Llama shapes, with
SmolLM2's tokenizer), so they take seconds; the "does it work" tests run each method on
smollm2-135m for one easy target within a small stated budget.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from course_lib.methods import prompts as P


@pytest.fixture(scope="module")
def smol():
    from course_lib.zoo import load_model

    model, tok = load_model("smollm2-135m", device="cpu")
    return model, tok


@pytest.fixture(scope="module")
def allowed(smol):
    # the pool these seeded thresholds were measured on (the slur blocklist removes 3 tokens and so
    # shifts every seeded draw); test_allowed_tokens_block_slurs covers the blocklist itself
    model, tok = smol
    return P.allowed_tokens(tok, P.token_embeddings(model).shape[0], block_offensive=False)


def tiny_lm(kind: str, vocab_size: int, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if kind == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=64))
    else:
        model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1))
    return model.requires_grad_(False).eval()


# ----------------------------------------------------------------------------- projection


def brute_force_nearest(embeds, E, allowed, k):
    """Nearest tokens by looping over queries and computing each cosine with a library call."""
    out = []
    for e in embeds.reshape(-1, E.shape[1]):
        cos = F.cosine_similarity(e[None, :].double(), E.double(), dim=1)
        cos[~allowed] = -2.0
        out.append(sorted(range(len(cos)), key=lambda i: -float(cos[i]))[:k])
    return torch.tensor(out).view(*embeds.shape[:-1], k)


def test_projection_equals_brute_force_nearest_neighbours():
    g = torch.Generator().manual_seed(0)
    E = torch.randn(200, 16, generator=g) * torch.rand(200, 1, generator=g) * 5  # norms vary a lot
    allowed = torch.rand(200, generator=g) > 0.3
    embeds = torch.randn(3, 4, 16, generator=g)
    ids, cos = P.project_to_tokens(embeds, E, k=3, allowed=allowed)
    assert ids.shape == (3, 4, 3)
    assert torch.equal(ids, brute_force_nearest(embeds, E, allowed, 3))
    assert allowed[ids].all()
    assert (cos[..., :-1] >= cos[..., 1:]).all()


def test_projection_is_cosine_not_euclidean():
    E = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.2, 0.21]])  # token 2: small norm, near the origin
    e = torch.tensor([[2.0, 1.8]])
    # by hand: cos(e, E0) = 0.743, cos(e, E1) = 0.669, cos(e, E2) = 0.997 -> token 2; Euclidean: 2.06, 2.15, 2.40 -> token 0
    assert P.project_to_tokens(e, E)[0].item() == 2
    assert torch.cdist(e, E).argmin().item() != 2  # the two metrics disagree here
    # a long vector along token 0 projects to token 0, however long
    assert P.project_to_tokens(torch.tensor([[100.0, 1.0]]), E)[0].item() == 0


def test_projection_on_real_embeddings_recovers_tokens(smol, allowed):
    model, tok = smol
    E = P.token_embeddings(model)
    ids = torch.tensor([[tok(" Paris", add_special_tokens=False)["input_ids"][0], 1234, 5678]])
    ids = ids[:, allowed[ids[0]]]
    got = P.project_to_tokens(E[ids] * 3.0, E, allowed=allowed)[0][..., 0]  # scaling does not change cosine
    assert torch.equal(got, ids)
    assert torch.equal(got, brute_force_nearest(E[ids], E[:], allowed, 1)[..., 0])


def test_nearest_token_distance_matches_definition():
    g = torch.Generator().manual_seed(1)
    E = torch.randn(50, 8, generator=g)
    x = torch.randn(2, 3, 8, generator=g, requires_grad=True)
    d = P.nearest_token_distance(x, E)
    nn_ids = brute_force_nearest(x.detach(), E, torch.ones(50, dtype=torch.bool), 1)[..., 0]
    assert torch.allclose(d, torch.linalg.vector_norm(x.detach() - E[nn_ids], dim=-1), atol=1e-6)
    d.sum().backward()  # differentiable in the embeddings
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert torch.equal(P.nearest_token_distance(x, E, nearest=P.NearestTokens(E)), d)  # same with the cache


def _nearest_double(x, E, allowed):
    """Cosine-nearest allowed token of each row of x, in double precision, one library call per row."""
    out = []
    for e in x.reshape(-1, E.shape[1]).double():
        cos = F.cosine_similarity(e[None, :], E.double(), dim=1)
        cos[~allowed] = -2.0
        out.append(int(cos.argmax()))
    return torch.tensor(out).view(x.shape[:-1])


@pytest.mark.parametrize("shortlist", [1, 8, 64])
def test_nearest_tokens_is_exact_along_a_random_walk(shortlist):
    g = torch.Generator().manual_seed(0)
    V, d = 3000, 24
    E = torch.randn(V, d, generator=g) * (0.5 + 3 * torch.rand(V, 1, generator=g))
    allowed = torch.rand(V, generator=g) > 0.2
    nearest = P.NearestTokens(E, allowed=allowed, shortlist=shortlist)
    x = E[torch.randint(0, V, (3, 4), generator=g)] * 1.5  # start on tokens, like an optimiser from `init`
    for step in range(60):
        size = 2.0 if step % 20 == 19 else 0.01  # mostly small moves, now and then a jump
        x = x + size * x.norm(dim=-1, keepdim=True) * torch.randn(x.shape, generator=g) / d ** 0.5
        got = nearest(x)
        assert got.shape == (3, 4)
        assert torch.equal(got, _nearest_double(x, E, allowed)), f"step {step}"
    assert nearest.full_searches >= 3  # every jump was searched again
    if shortlist > 1:  # (a shortlist of one leaves no gap for the bound: always a full search)
        assert nearest.full_searches < nearest.calls / 2  # the shortcut did take most small moves
    searches = nearest.full_searches
    assert torch.equal(nearest(x[0]), _nearest_double(x[0], E, allowed))  # a new shape...
    assert nearest.full_searches == searches + 1  # ...is searched afresh


def test_nearest_tokens_follows_a_move_to_a_token_outside_the_shortlist():
    # a prompt embedding slides from token 0 to token 1; the shortlist of two taken at token 0
    # is {0, 2}, so only the bound can say when a token off the list (1) may have become nearest
    E = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.6, 0.55], [-1.0, 0.0, 0.0]])
    nearest = P.NearestTokens(E, shortlist=2)
    seen = []
    for a in torch.linspace(0, 1, 41):
        x = ((1 - a) * E[0] + a * E[1])[None]
        got = int(nearest(x))
        assert got == int(_nearest_double(x, E, torch.ones(4, dtype=torch.bool))), f"a={a:.3f}"
        seen.append(got)
    assert seen[0] == 0 and 2 in seen and seen[-1] == 1
    assert nearest.full_searches < nearest.calls  # the shortlist answered some of the calls
    with pytest.raises(ValueError, match="no token is allowed"):
        P.NearestTokens(E, allowed=torch.zeros(4, dtype=torch.bool))


def test_allowed_tokens_excludes_special_and_non_ascii(smol):
    _, tok = smol
    ok = P.allowed_tokens(tok)
    assert not ok[tok.all_special_ids].any()
    assert ok[tok(" Paris", add_special_tokens=False)["input_ids"]].all()
    for i in ok.nonzero().squeeze(1)[::997].tolist():
        s = tok.decode([i])
        assert s.isascii() and s.isprintable() and s


# ----------------------------------------------------------------------------- loss


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_target_loss_matches_full_forward_on_ids(smol, kind):
    _, tok = smol
    model = tiny_lm(kind, len(tok))
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, len(tok), (3, 5), generator=g)
    target = tok(" the capital", add_special_tokens=False)["input_ids"]
    t = torch.tensor(target)
    ours = P.target_loss(model, P.token_embeddings(model)[prompts], t)
    full = torch.cat([prompts, t.repeat(3, 1)], dim=1)
    logp = model(input_ids=full).logits.log_softmax(-1)  # all positions, computed independently
    ref = torch.stack([-logp[r, 5 - 1 + j, target[j]] for j in range(len(target)) for r in range(3)]).view(len(target), 3).mean(0)
    assert torch.allclose(ours, ref, atol=1e-5)
    p = P.p_target(model, tok, prompts, " the capital")
    assert torch.allclose(p, torch.exp(-ref * len(target)), rtol=1e-4)


def test_encode_target_leading_space_matters(smol):
    _, tok = smol
    assert not torch.equal(P.encode_target(tok, " girl"), P.encode_target(tok, "girl"))
    with pytest.raises(ValueError, match="no tokens"):
        P.encode_target(tok, "")


# ----------------------------------------------------------------------------- GCG sampling


def test_gcg_candidates_match_nanogcg():
    from nanogcg import gcg as nanogcg
    g = torch.Generator().manual_seed(0)
    n, V = 6, 300
    ids = torch.randint(0, V, (n,), generator=g)
    grad = torch.randn(n, V, generator=g)
    not_allowed = torch.arange(0, V, 7)
    for seed, n_replace in [(0, 1), (3, 2)]:
        torch.manual_seed(seed)
        theirs = nanogcg.sample_ids_from_grad(ids.clone(), grad.clone(), 32, topk=16, n_replace=n_replace, not_allowed_ids=not_allowed)
        mask = torch.zeros(V, dtype=torch.bool)
        mask[not_allowed] = True
        ours = P.sample_candidates(ids, grad, 32, topk=16, n_replace=n_replace, not_allowed=mask,
                                   generator=torch.Generator().manual_seed(seed))
        assert torch.equal(ours, theirs)


def test_gcg_candidates_properties():
    g = torch.Generator().manual_seed(0)
    n, V = 5, 100
    ids = torch.randint(0, V, (n,), generator=g)
    grad = torch.randn(n, V, generator=g)
    not_allowed = torch.zeros(V, dtype=torch.bool)
    not_allowed[:50] = True
    c = P.sample_candidates(ids, grad, 200, topk=4, n_replace=2, not_allowed=not_allowed, generator=g)
    assert c.shape == (200, n)
    assert ((c != ids).sum(1) <= 2).all()
    g2 = grad.clone()
    g2[:, :50] = float("inf")
    top = (-g2).topk(4, dim=1).indices
    for row in c:
        for pos in (row != ids).nonzero().squeeze(1).tolist():
            assert row[pos] in top[pos]


# ----------------------------------------------------------------------------- the methods, on a tiny LM


@pytest.fixture(scope="module")
def tiny(smol):
    _, tok = smol
    return tiny_lm("gpt2", len(tok), seed=3), tok


RUNS = {
    "soft": lambda m, t, **kw: P.soft_prompt(
        m, t, " the", n_tokens=3, n_restarts=3, steps=12, eval_every=3, progress=False, **kw
    ),
    "pez": lambda m, t, **kw: P.pez(m, t, " the", n_tokens=3, n_restarts=3, steps=12, progress=False, **kw),
    "gcg": lambda m, t, **kw: P.gcg(
        m, t, " the", n_tokens=3, n_restarts=2, steps=6, search_width=16, topk=8, progress=False, **kw
    ),
}


@pytest.mark.parametrize("method", list(RUNS))
def test_best_so_far_never_rises_and_result_is_consistent(tiny, method):
    model, tok = tiny
    res = RUNS[method](model, tok, seed=0)
    R = res.ids.shape[0]
    assert res.best_history.shape[1] == R and res.history.shape == res.best_history.shape
    b = res.best_history[torch.isfinite(res.best_history).all(1)]
    assert (b[1:] <= b[:-1] + 1e-7).all()
    # the returned p(target) is that of the projected prompt, recomputed independently
    assert torch.allclose(res.p_target, P.p_target(model, tok, res.ids, " the"), rtol=1e-4)
    assert torch.allclose(res.loss, res.best_history[-1], atol=1e-5)
    assert res.text == tok.batch_decode(res.ids)


@pytest.mark.parametrize("method", list(RUNS))
def test_reproducible_for_a_seed(tiny, method):
    model, tok = tiny
    a, b, c = RUNS[method](model, tok, seed=5), RUNS[method](model, tok, seed=5), RUNS[method](model, tok, seed=6)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.history, b.history)
    assert not torch.equal(a.history, c.history)


def test_methods_do_not_touch_global_rng(tiny):
    model, tok = tiny
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    RUNS["gcg"](model, tok, seed=0)
    RUNS["soft"](model, tok, seed=0)
    assert torch.equal(torch.rand(3), before)


def test_token_counts_counts_only_successful_prompts(tiny):
    model, tok = tiny
    res = RUNS["pez"](model, tok, seed=0)
    thr = float(res.p_target.median())
    c = P.token_counts(tok, res, threshold=thr)
    assert sum(c.values()) == int(res.success(thr).sum()) * res.ids.shape[1]


# ----------------------------------------------------------------------------- on smollm2-135m

# Stated budgets and thresholds for an easy target, " the" (p ~ 0.004 after "x x x x"):
# GCG, 8 steps x 64 candidates: p > 0.5 (measured 0.99); PEZ, 25 steps x 4 restarts: p > 0.1
# (measured 0.38); soft prompt, 25 steps x 4 restarts: p(target | soft prompt) > 0.5, and its best
# projected prompt p > 0.05 (measured 0.22 without the regulariser, 0.36 with lam = 1; seed 1: 0.65, 0.32).
# Each run takes ~5-15 s on 2 free CPU cores.


def test_gcg_reaches_threshold_on_smollm2(smol, allowed):
    model, tok = smol
    base = P.p_target(model, tok, "x x x x", " the")
    res = P.gcg(model, tok, " the", n_tokens=4, n_restarts=1, steps=8, search_width=64, topk=64, init="x x x x",
                allowed=allowed, seed=0, progress=False)
    assert res.p_target.max() > 0.5, str(res)
    assert res.p_target.max() > 50 * base
    assert P.greedy_continuation(model, tok, res.ids[res.best], max_new_tokens=1)[0] == " the"


def test_pez_reaches_threshold_on_smollm2(smol, allowed):
    model, tok = smol
    res = P.pez(model, tok, " the", n_tokens=4, n_restarts=4, steps=25, lr=0.2, allowed=allowed, seed=0, progress=False)
    assert res.p_target.max() > 0.1, str(res)


def test_soft_prompt_succeeds_softly_and_projects_on_smollm2(smol, allowed):
    model, tok = smol
    res = P.soft_prompt(model, tok, " the", n_tokens=4, n_restarts=4, steps=25, lr=0.05, lam=0.0, eval_every=5,
                        allowed=allowed, seed=0, progress=False)
    E = P.token_embeddings(model)
    soft_p = torch.exp(-P.target_loss(model, res.soft, P.encode_target(tok, " the")))
    assert soft_p.max() > 0.5  # the soft prompt itself works...
    assert res.p_target.max() < soft_p.max()  # ...its projection works less well: judge the projection
    assert res.p_target.max() > 0.05, str(res)  # but the best projection still beats 'x x x x' (0.004) >10x
    assert P.project_to_tokens(res.soft, E, allowed=allowed)[0].shape == (4, 4, 1)
    reg = P.soft_prompt(model, tok, " the", n_tokens=4, n_restarts=4, steps=25, lr=0.05, lam=1.0, eval_every=5,
                        allowed=allowed, seed=0, progress=False)
    assert reg.p_target.max() > 0.05, str(reg)


def test_allowed_tokens_block_slurs(smollm2):
    from course_lib.methods.prompts import allowed_tokens, blocked_words

    model, tok = smollm2
    V = model.get_input_embeddings().weight.shape[0]
    ok, everything = allowed_tokens(tok, V), allowed_tokens(tok, V, block_offensive=False)
    removed = [tok.decode([i]) for i in (everything & ~ok).nonzero().squeeze(1).tolist()]
    assert removed, "the blocklist should remove some tokens of SmolLM2's vocabulary"
    assert all("".join(c for c in s.lower() if c.isalpha()) in blocked_words() for s in removed), removed
    assert not (ok & ~everything).any()
