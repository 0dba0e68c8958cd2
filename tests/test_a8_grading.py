"""a8_llm_lenses's graded tests: a correct solution written differently passes, plausible wrong ones lose points."""
from pathlib import Path

import pytest

from gradeutil import run_graded, score

NB = Path(__file__).resolve().parents[1] / "solutions" / "a8_llm_lenses" / "a8_llm_lenses.ipynb"

# Written independently of the reference: course_lib.hooks.capture for the blocks, the embeddings
# from the first block's input through a kwargs pre-hook, a torch-trained probe, numpy control labels.
LENS_DIFFERENT = """
from course_lib.hooks import capture

def logit_lens(model, input_ids):
    blocks, norm, head = model_parts(model)
    names = {m: n for n, m in model.named_modules()}
    block_names = [names[b] for b in blocks]
    first = {}

    def grab(_m, args, kwargs):
        first["x"] = args[0] if args else kwargs["hidden_states"]

    h = blocks[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.inference_mode(), capture(model, block_names) as acts:
            model(input_ids.unsqueeze(0))
    finally:
        h.remove()
    outs = [first["x"][0]]
    for n in block_names:
        o = acts[n]
        outs.append((o[0] if isinstance(o, (tuple, list)) else o)[0])
    with torch.inference_mode():
        return torch.stack([head(norm(s)) for s in outs]).clone()
"""

PROBE_DIFFERENT = """
import numpy as np

def probe_accuracy(x, y, train_idx, test_idx):
    xt, yt = x[train_idx].float(), y[train_idx].float()
    mu, sd = xt.mean(0), xt.std(0) + 1e-6
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(((xt - mu) / sd) @ w + b, yt) + 1e-2 * w.pow(2).sum()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = (((x[test_idx].float() - mu) / sd) @ w + b > 0).long()
    return (pred == y[test_idx]).float().mean().item()

def control_task(token_ids, y, seed):
    rng = np.random.default_rng(seed)
    ids = token_ids.numpy()
    labels = {t: int(rng.random() < y.float().mean().item()) for t in np.unique(ids)}
    return torch.tensor([labels[t] for t in ids])
"""

SAE_DIFFERENT = """
def sae_loss(sae, x, l1):
    f = sae.encode(x)
    err = x - sae.decode(f)
    return torch.einsum("nd,nd->", err, err) / x.shape[0] + l1 * f.sum() / x.shape[0]

def sae_train_step(sae, optimizer, x, l1):
    for p in sae.parameters():
        p.grad = None
    loss = sae_loss(sae, x, l1)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        sae.W_dec.copy_(torch.nn.functional.normalize(sae.W_dec, dim=0))
    return float(loss)
"""

REF_LENS = """
def logit_lens(model, input_ids):
    blocks, final_norm, unembed = model_parts(model)
    states = []
    handles = [blocks[0].register_forward_pre_hook(lambda m, a: states.append(a[0]))]
    handles += [b.register_forward_hook(lambda m, i, o: states.append(o[0] if isinstance(o, tuple) else o)) for b in blocks]
    try:
        with torch.no_grad():
            model(input_ids[None])
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        return unembed(%s(torch.cat(states)))
"""

REF_PROBE = """
from sklearn.linear_model import LogisticRegression

def probe_accuracy(x, y, train_idx, test_idx):
    clf = LogisticRegression(max_iter=2000).fit(x[%s].numpy(), y[%s].numpy())
    return float((clf.predict(x[test_idx].numpy()) == y[test_idx].numpy()).mean())

def control_task(token_ids, y, seed):
    g = torch.Generator().manual_seed(seed)
    types, inverse = torch.unique(token_ids, return_inverse=True)
    return %s
"""
GOOD_CONTROL = "(torch.rand(len(types), generator=g) < y.float().mean()).long()[inverse]"

REF_SAE = """
def sae_loss(sae, x, l1):
    f = sae.encode(x)
    return ((x - sae.decode(f)) ** 2).sum(1).mean() + l1 * %s

def sae_train_step(sae, optimizer, x, l1):
    %s
    loss = sae_loss(sae, x, l1)
    loss.backward()
    optimizer.step()
    %s
    return loss.item()
"""
RENORM = "with torch.no_grad(): sae.W_dec /= sae.W_dec.norm(dim=0, keepdim=True)"


def sae_code(penalty="f.abs().sum(1).mean()", zero="optimizer.zero_grad()", renorm=RENORM):
    return REF_SAE % (penalty, zero, renorm)


WRONG = {
    # exercise 1
    "logit lens skips the final norm": ({"logit_lens": REF_LENS % ""}, {"test_logit_lens", "test_logit_lens_hidden"}),
    "logit lens without the embeddings row": ({"logit_lens": REF_LENS.replace("handles = [blocks[0].register_forward_pre_hook(lambda m, a: states.append(a[0]))]", "handles = []") % "final_norm"}, {"test_logit_lens"}),
    # exercise 2
    "probe scored on its training rows": ({"probe": REF_PROBE.replace("x[test_idx]", "x[train_idx]").replace("y[test_idx]", "y[train_idx]") % ("train_idx", "train_idx", GOOD_CONTROL)}, {"test_probe_accuracy"}),
    "probe fitted on all rows": ({"probe": REF_PROBE % (":", ":", GOOD_CONTROL)}, {"test_probe_accuracy"}),
    "control label per token, not per type": ({"probe": REF_PROBE % ("train_idx", "train_idx", "(torch.rand(len(token_ids), generator=g) < y.float().mean()).long()")}, {"test_control_task"}),
    "control labels uniform, not the task's frequencies": ({"probe": REF_PROBE % ("train_idx", "train_idx", "torch.randint(0, 2, (len(types),), generator=g)[inverse]")}, {"test_control_task"}),
    # exercise 3
    "L1 on the decoder instead of the latents": ({"sae": sae_code(penalty="sae.W_dec.abs().sum()")}, {"test_sae_loss", "test_sae_step"}),
    "squared error averaged over dimensions": ({"sae": REF_SAE.replace(".sum(1).mean() + l1", ".mean() + l1") % ("f.abs().sum(1).mean()", "optimizer.zero_grad()", RENORM)}, {"test_sae_loss"}),
    "no decoder renormalisation": ({"sae": sae_code(renorm="pass")}, {"test_sae_step"}),
    "gradients never reset": ({"sae": sae_code(zero="pass")}, {"test_sae_step"}),
}


def test_reference_solution_gets_full_marks():
    res = run_graded(NB)
    got, full = score(res)
    assert got == full > 0, {k: r.error for k, r in res.items() if not r.passed}


def test_a_different_correct_solution_gets_full_marks():
    res = run_graded(NB, {"logit_lens": LENS_DIFFERENT, "probe": PROBE_DIFFERENT, "sae": SAE_DIFFERENT})
    got, full = score(res)
    assert got == full, {k: r.error for k, r in res.items() if not r.passed}


def test_the_reference_rewrites_are_correct_too():
    res = run_graded(NB, {"logit_lens": REF_LENS % "final_norm", "probe": REF_PROBE % ("train_idx", "train_idx", GOOD_CONTROL), "sae": sae_code()})
    got, full = score(res)
    assert got == full, {k: r.error for k, r in res.items() if not r.passed}


@pytest.mark.parametrize("mistake", list(WRONG))
def test_plausible_mistakes_lose_points(mistake):
    overrides, must_fail = WRONG[mistake]
    res = run_graded(NB, overrides)
    failed = {gid for gid, r in res.items() if not r.passed}
    assert must_fail <= failed, f"the mistake '{mistake}' still passed {sorted(must_fail - failed)}"
    assert all(res[g].error.startswith("AssertionError") for g in failed), [res[g].error for g in failed]


def test_calling_course_lib_lens_loses_the_exercise():
    cheat = """
from course_lib.methods.lm_lenses import logit_lens as _lens

def logit_lens(model, input_ids):
    return _lens(model, input_ids)
"""
    res = run_graded(NB, {"logit_lens": cheat})
    assert not res["test_logit_lens"].passed and not res["test_logit_lens_hidden"].passed
    assert "write the method yourself" in res["test_logit_lens"].error
    assert all(r.passed for g, r in res.items() if "lens" not in g)


def test_control_task_thresholds_hold_for_any_random_stream():
    # The hidden check's data and thresholds, against 30 seeds of two different random streams.
    import numpy as np
    import torch

    g = torch.Generator().manual_seed(7)
    token_ids = torch.randint(0, 3000, (30000,), generator=g)
    y = (torch.rand(30000, generator=g) < 0.3).long()
    types, inverse = torch.unique(token_ids, return_inverse=True)
    for seed in range(30):
        torch_stream = (torch.rand(len(types), generator=torch.Generator().manual_seed(seed)) < y.float().mean()).long()
        numpy_stream = torch.from_numpy((np.random.default_rng(seed).random(len(types)) < 0.3).astype(np.int64))
        for per_type in (torch_stream, numpy_stream):
            assert 0.25 < per_type.float().mean().item() < 0.35
            assert (per_type[inverse] == y).float().mean().item() < 0.7


def test_probe_thresholds_hold_for_other_solvers_and_splits():
    # The planted-direction and pure-noise checks of the hidden tests, with sklearn at two strengths over 30 seeds.
    import torch
    from sklearn.linear_model import LogisticRegression

    for seed in range(30):
        g = torch.Generator().manual_seed(seed)
        y = torch.randint(0, 2, (400,), generator=g)
        direction = torch.randn(20, generator=g)
        x = torch.randn(400, 20, generator=g) + 4.0 * y[:, None] * direction / direction.norm()
        perm = torch.randperm(400, generator=g)
        xn, yn = torch.randn(300, 200, generator=g), torch.randint(0, 2, (300,), generator=g)
        for c in (0.1, 100.0):
            clf = LogisticRegression(C=c, max_iter=3000).fit(x[perm[:300]].numpy(), y[perm[:300]].numpy())
            assert (clf.predict(x[perm[300:]].numpy()) == y[perm[300:]].numpy()).mean() > 0.85
            clf = LogisticRegression(C=c, max_iter=3000).fit(xn[:150].numpy(), yn[:150].numpy())
            assert (clf.predict(xn[150:].numpy()) == yn[150:].numpy()).mean() < 0.7
