"""The objectives' sharing plan: many objectives rendered as one batch evaluate what they share once.

Speed machinery for :func:`render` (the same values as evaluating each objective on its own
images); worked out once per render.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from .objectives import LOGITS, Objective, _in_range


def _plan(objs: Sequence[Objective], n: int) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """A function ``acts -> (K*n,)``: objective ``i`` on its own ``n`` images, from the activations of all K*n images.

    Through the objectives' linear forms: a row-wise term that several objectives share (the same
    ``key``) is evaluated once on the whole batch and weighted per image; the other terms see their
    objective's part of each layer. The parts are cut once with ``split`` (its backward writes all
    parts into one gradient tensor), not sliced per objective (each slice's backward would fill and
    add a zero gradient of the whole layer). Each image's value is the same as ``objs[i]`` on its
    own images (up to the order of the additions). Which terms are shared is worked out here, once:
    :func:`render` calls the plan at every step, and its bookkeeping is not free
    (tests/benchmarks/bench_featurevis.py).
    """
    k = len(objs)
    users: dict[object, dict[int, float]] = {}  # term -> {objective: summed weight}
    leaves: dict[object, Objective] = {}
    for i, o in enumerate(objs):
        for w, leaf in o.terms:
            gk = leaf if leaf.key is None else leaf.key
            leaves.setdefault(gk, leaf)
            users.setdefault(gk, {})[i] = users.get(gk, {}).get(i, 0.0) + w
    shared = [gk for gk, us in users.items() if len(us) > 1 and leaves[gk].rowwise]
    # families (channel c of one layer, logit c): one batched evaluation, each image at its own index,
    # where several objectives use the family and none uses two of its members
    members: dict[tuple, list] = {}
    for gk, leaf in leaves.items():
        if leaf.family is not None and gk not in shared:
            members.setdefault(leaf.family[0], []).append(gk)
    families = []
    for gks in members.values():
        objectives_of = [i for gk in gks for i in users[gk]]
        if len(objectives_of) > 1 and len(set(objectives_of)) == len(objectives_of):
            families.append(gks)
    if not shared and not families and k == 1:
        return objs[0]
    shared_set = set(shared) | {gk for gks in families for gk in gks}
    own: list[tuple[list[tuple[float, Objective]], float]] = []  # per objective: (weighted terms on its own part, constant)
    for i, o in enumerate(objs):
        terms, done = [], set()
        for _w, leaf in o.terms:
            gk = leaf if leaf.key is None else leaf.key
            if gk in shared_set or gk in done:
                continue
            done.add(gk)
            terms.append((users[gk][i], leaf))
        own.append((terms, float(o.const)))
    shared_weights = [
        (leaves[gk], torch.tensor([users[gk].get(i, 0.0) for i in range(k)], dtype=torch.float64).repeat_interleave(n))
        for gk in shared
    ]  # (K*n,) each
    family_terms = []
    for gks in families:
        weights, index = torch.zeros(k, dtype=torch.float64), torch.zeros(k, dtype=torch.long)
        for gk in gks:
            for i, w in users[gk].items():
                weights[i], index[i] = w, leaves[gk].family[1]
        family_terms.append(
            (leaves[gks[0]], index.repeat_interleave(n), None if bool((weights == 1).all()) else weights.repeat_interleave(n))
        )
    family_max = [max(leaves[gk].family[1] for gk in gks) for gks in families]  # checked against the layer once
    any_own = any(terms for terms, _ in own)
    consts = torch.tensor([c for _, c in own], dtype=torch.float64).repeat_interleave(n)  # (K*n,) when no term is an objective's own
    on_device: dict[tuple, tuple] = {}  # the weights and indices, copied once per (device, dtype)

    def evaluate(acts: dict[str, torch.Tensor]) -> torch.Tensor:
        ref = next(iter(acts.values()))
        key = (ref.device, ref.dtype)
        if key not in on_device:
            for (leaf, _, _), top in zip(family_terms, family_max):
                fam = leaf.family[0]
                name = LOGITS if fam[0] == "logit" else fam[1]
                if name in acts:
                    _in_range(acts[name], top, "class_logit" if fam[0] == "logit" else "channel", "c",
                              "classes" if fam[0] == "logit" else "channels")
            on_device[key] = (
                [w.to(ref.device, ref.dtype) for _, w in shared_weights],
                [(idx.to(ref.device), None if w is None else w.to(ref.device, ref.dtype)) for _, idx, w in family_terms],
                consts.to(ref.device, ref.dtype),
            )
        shared_w, family_iw, out = on_device[key]
        if any_own:
            parts = {name: v.split(n) for name, v in acts.items()}  # {name: K views (n, ...)}
            values = []
            for i, (terms, const) in enumerate(own):
                mine = {name: p[i] for name, p in parts.items()}
                v = None
                for w, leaf in terms:
                    t = leaf(mine)
                    t = t if w == 1.0 else w * t
                    v = t if v is None else v + t
                if v is None:
                    v = ref.new_full((n,), const)
                elif const:
                    v = v + const
                values.append(v)
            out = torch.cat(values)  # (K*n,)
        for (leaf, _), w in zip(shared_weights, shared_w):
            out = out + w * leaf(acts)
        for (leaf, _, _), (idx, w) in zip(family_terms, family_iw):
            for name in leaf.layers:  # the same clear error as calling the leaf
                if name not in acts:
                    raise KeyError(f"objective {leaf.name!r} reads {[name]}, which are not among the activations {sorted(acts)}")
            term = leaf.family[2](acts, idx)  # (K*n,)
            out = out + (term if w is None else w * term)
        return out

    return evaluate
