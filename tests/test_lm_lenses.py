"""lm_lenses against defining properties, on tiny random GPT-2 and Llama models built from configs."""
from __future__ import annotations

import pytest
import torch

from course_lib.methods import lm_lenses as L
from course_lib.hooks import get_module

VOCAB = 61


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices: one thread is many times faster than two on a shared, loaded CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tiny(kind: str) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = GPT2Config(n_layer=3, n_head=2, n_embd=32, vocab_size=VOCAB, n_positions=64, bos_token_id=0, eos_token_id=0)
        model = GPT2LMHeadModel(cfg)
    else:
        cfg = LlamaConfig(num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, hidden_size=32,
                          intermediate_size=64, vocab_size=VOCAB, bos_token_id=0, eos_token_id=0, pad_token_id=0)
        model = LlamaForCausalLM(cfg)
    return model.eval()


class CharTokenizer:
    """A character tokenizer with the slice of the HF call interface the lenses use."""

    pad_token_id = 0

    def __init__(self, padding_side: str = "right"):
        self.padding_side = padding_side

    def _ids(self, text: str) -> list[int]:
        return [1 + (ord(c) % (VOCAB - 1)) for c in text]

    def __call__(self, texts, return_tensors=None, padding=False, truncation=False, max_length=None):
        single = isinstance(texts, str)
        rows = [self._ids(t)[: max_length if truncation else None] for t in ([texts] if single else texts)]
        if single:
            return {"input_ids": rows[0]}
        width = max(map(len, rows))
        ids, mask = [], []
        for r in rows:
            pad = [0] * (width - len(r))
            ids.append(r + pad if self.padding_side == "right" else pad + r)
            mask.append([1] * len(r) + pad if self.padding_side == "right" else pad + [1] * len(r))
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}

    def decode(self, ids):
        return "".join(chr(96 + (i % 26)) for i in ids)


TEXTS = ["the cat sat", "a much longer sentence than the others here", "hi", "probing is not using", "xyz abc"]


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_find_layers_without_attribute_assumptions(kind):
    model = tiny(kind)
    names = L.find_layers(model)
    assert len(names.blocks) == 3
    assert names.final_norm == ("transformer.ln_f" if kind == "gpt2" else "model.norm")
    assert names.unembed == "lm_head"


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_logit_lens_last_layer_is_the_models_logits(kind):
    model = tiny(kind)
    ids = torch.randint(1, VOCAB, (9,), generator=torch.Generator().manual_seed(1))
    lens, logits = L.logit_lens(model, ids, return_model_logits=True)
    assert lens.shape == (4, 9, VOCAB)
    torch.testing.assert_close(lens[-1], logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lens[-1], model(ids[None]).logits[0], atol=1e-5, rtol=1e-5)
    # layer 0 is the embeddings through the final norm and the unembedding
    names = L.find_layers(model)
    emb = model.get_input_embeddings()(ids)
    if kind == "gpt2":
        emb = emb + model.transformer.wpe(torch.arange(9))
    ref0 = model.get_output_embeddings()(get_module(model, names.final_norm)(emb))
    torch.testing.assert_close(lens[0], ref0, atol=1e-5, rtol=1e-5)
    # batched input gives the same lens
    torch.testing.assert_close(L.logit_lens(model, ids[None])[:, 0], lens, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_capture_is_independent_of_batch_size_and_padding_side(kind):
    model = tiny(kind)
    ref = L.capture_activations(model, CharTokenizer("right"), TEXTS, [0, 2, 3], batch_size=5, progress=False)
    n_tokens = sum(len(t) for t in TEXTS)
    assert ref["acts"][2].shape == (n_tokens, 32) and ref["token_ids"].shape == (n_tokens,)
    assert ref["doc"].tolist() == [i for i, t in enumerate(TEXTS) for _ in t]
    assert ref["pos"].tolist() == [p for t in TEXTS for p in range(len(t))]
    for side, bs in [("left", 5), ("right", 1), ("left", 2)]:
        got = L.capture_activations(model, CharTokenizer(side), TEXTS, [0, 2, 3], batch_size=bs, progress=False)
        for layer in (0, 2, 3):
            torch.testing.assert_close(got["acts"][layer], ref["acts"][layer], atol=1e-4, rtol=1e-4)
    # stopping the pass after block 1 gives the same layer-1 stream as the full pass
    early = L.capture_activations(model, CharTokenizer(), TEXTS, [1], progress=False)["acts"][1]
    full = L.capture_activations(model, CharTokenizer(), TEXTS, [1, 3], progress=False)["acts"][1]
    torch.testing.assert_close(early, full, atol=1e-5, rtol=1e-5)
    # each text alone, no padding at all, agrees too
    alone = L.residual_stream(model, torch.tensor([CharTokenizer()._ids(TEXTS[3])]))[0][3, 0]
    sel = ref["doc"] == 3
    torch.testing.assert_close(ref["acts"][3][sel], alone, atol=1e-4, rtol=1e-4)


def test_capture_cache_is_float16_and_checked(tmp_path):
    model = tiny("llama")
    tok = CharTokenizer()
    first = L.capture_activations(model, tok, TEXTS, [1], cache_dir=tmp_path, progress=False)
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1 and files[0].with_suffix(".sha256").is_file()
    from safetensors.torch import load_file

    assert load_file(files[0])["layer1"].dtype == torch.float16
    second = L.capture_activations(model, tok, TEXTS, [1], cache_dir=tmp_path, progress=False)
    assert torch.equal(first["acts"][1], second["acts"][1])
    fresh = L.capture_activations(model, tok, TEXTS, [1], progress=False)
    torch.testing.assert_close(second["acts"][1], fresh["acts"][1], atol=1e-2, rtol=1e-2)
    # a damaged cache file is not trusted: recomputed and rewritten
    files[0].write_bytes(files[0].read_bytes()[:-8] + b"\0" * 8)
    third = L.capture_activations(model, tok, TEXTS, [1], cache_dir=tmp_path, progress=False)
    torch.testing.assert_close(third["acts"][1], fresh["acts"][1], atol=1e-2, rtol=1e-2)
    # other texts give another cache entry
    L.capture_activations(model, tok, TEXTS[:2], [1], cache_dir=tmp_path, progress=False)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2


def planted(seed: int, n: int = 1200, d: int = 48, n_types: int = 300):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    direction = torch.randn(d, generator=g)
    direction /= direction.norm()
    x = torch.randn(n, d, generator=g) + 3.0 * (2 * y[:, None] - 1) * direction
    token_ids = torch.randint(0, n_types, (n,), generator=g)
    return x, y, token_ids, direction


@pytest.mark.parametrize("seed", range(3))
def test_probe_recovers_a_planted_direction_and_control_is_near_chance(seed):
    x, y, token_ids, direction = planted(seed)
    r = L.train_probe(x, y, seed=seed)
    assert r.test_acc > 0.95, r
    w = (r.weight[1] - r.weight[0]) / r.std  # back in the raw coordinates
    assert torch.nn.functional.cosine_similarity(w, direction, dim=0) > 0.8
    ctl = L.control_labels(token_ids, y, seed=seed)
    # the control task is a function of the word type, with the task's label distribution
    for t in token_ids.unique()[:20]:
        assert ctl[token_ids == t].unique().numel() == 1
    assert abs(ctl.float().mean() - y.float().mean()) < 0.1
    c = L.train_probe(x, ctl, seed=seed)
    assert 0.35 < c.test_acc < 0.65, c
    rows = L.probe_layers({0: x, 1: torch.randn_like(x)}, y, control=ctl, seed=seed)
    assert rows[0]["selectivity"] > 0.3 and abs(rows[1]["test"] - 0.5) < 0.15


def test_attention_patterns_are_causal_distributions_and_head_scores():
    model = tiny("llama")
    ids = torch.randint(1, VOCAB, (10,), generator=torch.Generator().manual_seed(0))
    before = model.config._attn_implementation
    pats = L.attention_patterns(model, ids)
    assert model.config._attn_implementation == before
    assert pats.shape == (3, 4, 10, 10)
    torch.testing.assert_close(pats.sum(-1), torch.ones(3, 4, 10))
    assert pats.triu(1).abs().max() < 1e-6
    # scores on hand-made patterns: a pure previous-token head and a pure induction head
    T, period = 12, 6
    prev = torch.zeros(1, 1, T, T)
    prev[0, 0, 0, 0] = 1
    prev[0, 0, torch.arange(1, T), torch.arange(T - 1)] = 1
    assert L.previous_token_scores(prev).item() == pytest.approx(1.0)
    ind = torch.zeros(1, 1, T, T)
    for t in range(T):
        ind[0, 0, t, t - period + 1 if t >= period else 0] = 1
    assert L.induction_scores(ind, period).item() == pytest.approx(1.0)
    assert L.induction_scores(prev, period).item() == pytest.approx(0.0)


def test_sae_loss_penalises_latents_not_decoder():
    x = torch.randn(8, 4)
    f = torch.rand(8, 6)
    x_hat = x + 0.5
    assert L.sae_loss(x, x_hat, f, 0.0).item() == pytest.approx(4 * 0.25)
    assert L.sae_loss(x, x_hat, f, 2.0).item() == pytest.approx(1.0 + 2 * f.sum(-1).mean().item(), rel=1e-5)


def test_sae_trains_and_splice_in_beats_zero_ablation():
    model = tiny("llama")
    tok = CharTokenizer()
    texts = [f"sample text number {i} with words" for i in range(40)]
    acts = L.capture_activations(model, tok, texts, [2], progress=False)["acts"][2]
    sae, curve = L.train_sae(acts, n_latents=128, l1=1e-3, steps=300, batch_size=128, lr=3e-3, seed=0, progress=False)
    torch.testing.assert_close(sae.W_dec.norm(dim=0), torch.ones(128))
    assert sum(curve[-20:]) / 20 < 0.5 * sum(curve[:20]) / 20
    rep = L.sae_report(sae, acts)
    assert rep["fvu"] < 0.3 and 0 < rep["l0"] < 128
    clean = L.lm_loss(model, tok, texts)
    same = L.lm_loss(model, tok, texts, layer=2, replace=lambda h: h)
    assert same == pytest.approx(clean, rel=1e-5)
    spliced = L.lm_loss(model, tok, texts, layer=2, replace=lambda h: sae(h)[0])
    zero = L.lm_loss(model, tok, texts, layer=2, replace=torch.zeros_like)
    assert abs(spliced - clean) < abs(zero - clean)


def test_top_contexts_marks_the_token():
    tok = CharTokenizer()
    texts = ["abcdef", "ghij"]
    values = torch.tensor([0.0, 0, 0, 5, 0, 0, 0, 1, 0, 0])
    doc = torch.tensor([0] * 6 + [1] * 4)
    pos = torch.tensor(list(range(6)) + list(range(4)))
    token_ids = torch.zeros(10, dtype=torch.long)
    top = L.top_contexts(values, doc, pos, token_ids, tok, texts, k=2, window=2)
    assert [v for v, _ in top] == [5.0, 1.0]
    assert top[0][1].endswith("]") and top[0][1].count("[") == 1 and len(top[0][1]) == 2 + 3


def test_parse_play_keeps_speeches_and_drops_stage_directions():
    from course_lib.zoo.corpus import parse_play

    md = "# Play\n\n## ACT I\n\n_Enter A_\n\n**BERNARDO**  \nWho's there?  \nStand.\n\n**FRANCISCO**  \nNay.\n\n_Exit_\n"
    assert parse_play(md) == ["Bernardo: Who's there? Stand.", "Francisco: Nay."]


def test_shakespeare_corpus_is_large_split_by_play_and_licensed():
    from course_lib.zoo import load_dataset

    train, test = load_dataset("shakespeare", split="train"), load_dataset("shakespeare", split="test")
    assert "public domain" in train["licence"] and "MIT" in train["licence"]
    assert not set(train["plays"]) & set(test["plays"])
    n_words = sum(len(t.split()) for t in train["texts"] + test["texts"])
    assert n_words > 200_000  # SmolLM2's tokenizer makes ~1.3M tokens of them
    assert len(load_dataset("shakespeare", split="test", n=10)["texts"]) == 10
    with pytest.raises(ValueError, match="train, test or all"):
        load_dataset("shakespeare", split="dev")


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_logit_lens_at_chosen_positions_equals_the_full_lens(kind):
    model = tiny(kind)
    ids = torch.randint(1, VOCAB, (2, 7), generator=torch.Generator().manual_seed(2))
    full, logits = L.logit_lens(model, ids, return_model_logits=True)  # (L+1, B, T, V)
    torch.testing.assert_close(L.logit_lens(model, ids), full)  # without the model's own unembedding
    some, some_logits = L.logit_lens(model, ids, positions=[0, -1], return_model_logits=True)
    assert some.shape == (4, 2, 2, VOCAB)
    torch.testing.assert_close(some, full[:, :, [0, -1]])
    torch.testing.assert_close(some_logits, logits[:, [0, -1]])
    torch.testing.assert_close(L.logit_lens(model, ids[0], positions=-1), full[:, 0, [-1]])


def _small_sae_config(**kw):
    return L.SAEConfig(**{**dict(layer=2, n_texts=30, max_length=32, n_latents=64, l1=1e-3, steps=40, batch_size=64), **kw})


def test_pretrained_sae_trains_once_then_loads_the_same_weights(tmp_path, monkeypatch):
    model, tok = tiny("llama"), CharTokenizer()
    corpus = [f"text number {i}: some words, then more words" for i in range(60)]
    cfg = _small_sae_config()
    first = L.pretrained_sae(model, tok, corpus, cfg, cache_dir=tmp_path, progress=False, log=None)
    assert first.trained and first.path.is_file() and len(first.curve) == cfg.steps
    assert first.texts == L.sae_texts(corpus, cfg) and len(first.texts) == 30

    def no_training(*a, **k):
        raise AssertionError("train_sae was called although the SAE is cached")

    monkeypatch.setattr(L, "train_sae", no_training)
    second = L.pretrained_sae(model, tok, corpus, cfg, cache_dir=tmp_path, progress=False, log=None)
    assert not second.trained and second.curve == first.curve and second.path == first.path
    assert (second.scale, second.cutoff) == (first.scale, first.cutoff)
    for k, v in first.sae.state_dict().items():
        assert torch.equal(v, second.sae.state_dict()[k]), k
    h = torch.randn(5, 32)
    assert torch.equal(first.reconstruct(h), second.reconstruct(h))
    monkeypatch.undo()
    # another recipe is another file
    L.pretrained_sae(model, tok, corpus, _small_sae_config(l1=2e-3), cache_dir=tmp_path, progress=False, log=None)
    assert len(list(tmp_path.glob("sae-*.safetensors"))) == 2


def test_pretrained_sae_detects_a_damaged_or_mismatched_file(tmp_path):
    import json

    model, tok = tiny("llama"), CharTokenizer()
    corpus = [f"line {i} of a small corpus" for i in range(40)]
    cfg = _small_sae_config(steps=20)
    first = L.pretrained_sae(model, tok, corpus, cfg, cache_dir=tmp_path, progress=False, log=None)
    data = first.path.read_bytes()
    first.path.write_bytes(data[:-8] + b"\0" * 8)  # damaged weights
    with pytest.warns(UserWarning, match="sha256"):
        again = L.pretrained_sae(model, tok, corpus, cfg, cache_dir=tmp_path, progress=False, log=None)
    assert again.trained and first.path.read_bytes() == data  # rebuilt: the same seed gives the same file
    meta_path = first.path.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta["config"]["l1"] = 99.0  # a record that does not belong to this recipe
    meta_path.write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="config differs"):
        assert L.pretrained_sae(model, tok, corpus, cfg, cache_dir=tmp_path, progress=False, log=None).trained
    meta_path.write_text("{not json")
    with pytest.warns(UserWarning, match="cannot be read"):
        assert L.pretrained_sae(model, tok, corpus, cfg, cache_dir=tmp_path, progress=False, log=None).trained
    assert not L.pretrained_sae(model, tok, corpus, cfg, cache_dir=tmp_path, progress=False, log=None).trained


def test_lecture_sae_recipe_on_smollm2_splices_in_below_zero_ablation(smollm2, tmp_path):
    """Lecture 08's recipe (SAEConfig()) on fewer texts, to keep the test short: its splice-in loss on
    held-out plays lies well below the zero-ablation loss."""
    from course_lib.zoo import load_dataset

    model, tok = smollm2
    cfg = L.SAEConfig(n_texts=50)
    p = L.pretrained_sae(
        model, tok, load_dataset("shakespeare", split="train")["texts"], cfg, cache_dir=tmp_path, progress=False, log=None
    )
    held_out = load_dataset("shakespeare", split="test")["texts"][:8]
    kw = dict(max_length=32, batch_size=8)
    clean = L.lm_loss(model, tok, held_out, **kw)
    spliced = L.lm_loss(model, tok, held_out, layer=cfg.layer, replace=p.reconstruct, **kw)
    zeroed = L.lm_loss(model, tok, held_out, layer=cfg.layer, replace=torch.zeros_like, **kw)
    assert clean < spliced < zeroed, (clean, spliced, zeroed)
    assert (zeroed - spliced) / (zeroed - clean) > 0.5, (clean, spliced, zeroed)


def test_train_zoo_prebuilds_the_lecture_sae_only_when_asked(monkeypatch):
    from course_lib import cli
    from course_lib.zoo import train

    calls = []
    monkeypatch.setattr(cli, "train_lecture_sae", lambda **kw: calls.append(("sae", kw)))
    monkeypatch.setattr(train, "train_zoo", lambda out, only=None, **kw: calls.append(("zoo", only)))
    assert cli.main(["train-zoo", "--only", "lecture08-sae"]) == 0
    assert calls == [("sae", {"force": False})]
    calls.clear()
    assert cli.main(["train-zoo", "--only", "diabetes-mlp", "--sae", "--force"]) == 0
    assert calls == [("zoo", ["diabetes-mlp"]), ("sae", {"force": True})]
    calls.clear()
    assert cli.main(["train-zoo", "--only", "diabetes-mlp"]) == 0
    assert calls == [("zoo", ["diabetes-mlp"])]


def test_lm_loss_refuses_a_layer_it_cannot_replace():
    """layer=0 used to patch block -1, the *last* block: a silent wrong answer (issue 26)."""
    model, tok, texts = tiny("gpt2"), CharTokenizer(), ["hello there", "a b c"]
    ident = L.lm_loss(model, tok, texts, layer=3, replace=lambda h: h)
    assert abs(ident - L.lm_loss(model, tok, texts)) < 1e-5
    for bad in (0, 4, -1):
        with pytest.raises(ValueError, match="layer"):
            L.lm_loss(model, tok, texts, layer=bad, replace=lambda h: h)
    with pytest.raises(ValueError, match="layer and replace"):
        L.lm_loss(model, tok, texts, layer=2)
    with pytest.raises(TypeError, match="texts"):
        L.lm_loss(model, tok, "hello there")


def test_train_sae_leaves_the_global_rng_alone():
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    before = torch.get_rng_state()
    sae_a, curve_a = L.train_sae(x, n_latents=16, l1=1e-3, steps=5, batch_size=16, seed=3, progress=False)
    assert torch.equal(before, torch.get_rng_state())
    torch.manual_seed(123)  # whatever the caller's state, the same seed gives the same SAE
    sae_b, curve_b = L.train_sae(x, n_latents=16, l1=1e-3, steps=5, batch_size=16, seed=3, progress=False)
    assert curve_a == curve_b and torch.equal(sae_a.W_dec, sae_b.W_dec)
