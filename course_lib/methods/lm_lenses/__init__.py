"""Lenses into a causal language model: residual streams, logit lens, probes, attention, SAEs.

Works for any Hugging Face causal LM without assuming its attribute names (``model.model``
for Llama, ``model.transformer`` for GPT-2): :func:`find_layers` finds the decoder blocks,
the final norm and the unembedding from the module tree and the config.

    names = find_layers(model)                        # LayerNames(blocks=[...], final_norm=..., ...)
    lens = logit_lens(model, input_ids)               # (L+1, T, V): embeddings, then each block
    last = logit_lens(model, input_ids, positions=-1)  # (L+1, 1, V): only the last position unembedded
    acts = capture_activations(model, tok, texts, layers=[3, 6])   # flattened real tokens, cached
    result = train_probe(X, y, seed=0)                # logistic regression, held-out accuracy
    y_ctl = control_labels(token_ids, y, seed=0)      # Hewitt & Liang (2019) control task
    pats = attention_patterns(model, input_ids)       # (L, H, T, T)
    sae, curve = train_sae(X, n_latents=1024, l1=3e-3, steps=2000, seed=0)
    p = pretrained_sae(model, tok, corpus_texts, SAEConfig())   # trained on first use, then loaded from the cache
    lm_loss(model, tok, texts, layer=p.config.layer, replace=p.reconstruct)   # the SAE spliced in

References: nostalgebraist (2020) "interpreting GPT: the logit lens"; Hewitt & Liang (2019)
"Designing and Interpreting Probes with Control Tasks"; Olsson et al. (2022) "In-context
Learning and Induction Heads"; Bricken et al. (2023) "Towards Monosemanticity";
Cunningham et al. (2023) "Sparse Autoencoders Find Highly Interpretable Features".
"""
from .lenses import (
    LayerNames,
    attention_patterns,
    capture_activations,
    find_layers,
    induction_scores,
    logit_lens,
    previous_token_scores,
    residual_stream,
)
from .probes import ProbeResult, control_labels, probe_layers, split_indices, train_probe
from .sae import (
    PretrainedSAE,
    SAEConfig,
    SparseAutoencoder,
    lm_loss,
    pretrained_sae,
    sae_loss,
    sae_report,
    sae_texts,
    top_contexts,
    train_sae,
)

__all__ = [
    "LayerNames", "find_layers", "residual_stream", "logit_lens", "capture_activations",
    "ProbeResult", "train_probe", "control_labels", "probe_layers", "attention_patterns",
    "previous_token_scores", "induction_scores", "SparseAutoencoder", "sae_loss", "train_sae",
    "sae_report", "lm_loss", "top_contexts", "SAEConfig", "PretrainedSAE", "sae_texts", "pretrained_sae", "split_indices",
]

