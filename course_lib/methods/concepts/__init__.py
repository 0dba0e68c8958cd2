"""Concepts and data: TCAV (Kim et al., 2018) and which training images support a prediction.

Public API (names and signatures are stable; lecture 09 and assignment a9 build on them):

    concept_images(kind, n=50, *, seed=0, split="train", cue_class=None, colour="red",
                   shapes=ROUND_SHAPES) -> (n, 3, 64, 64)        # concept sets from `scenes`
    random_sets(n_sets, n=50, *, seed=0, split="train") -> list of (n, 3, 64, 64)
    layer_activations(model, x, layer="conv3", *, batch_size=64) -> (N, D)  flattened, on the CPU
    compute_cav(concept_acts, random_acts, *, seed=0, C=1.0, holdout=0.25) -> CAV
    directional_derivatives(model, x, cavs, target, *, layer="conv3", batch_size=64)
        -> (B, R) for one target, (T, B, R) for a list of T targets
    tcav_scores(model, x, cavs, target, *, layer="conv3", batch_size=64) -> (R,) or (T, R)
    tcav_significance(concept_scores, random_scores, *, alpha=0.05) -> (p_value, significant)
    tcav(model, x, concept, randoms, target, *, layer="conv3", alpha=0.05, seed=0,
         concept_name="concept", batch_size=64, progress=True) -> TCAVResult
    penultimate_features(model, x, *, layer="features", batch_size=128) -> (N, C)
    data_attribution(model, x_test, train_x, train_y=None, *, method="cosine", layer="features",
                     target=None, batch_size=128) -> DataAttributionResult

**Concept activation vector (CAV).** Collect the activations ``f_l(x)`` of a layer ``l`` for
images that show a concept and for random images, fit a linear classifier between them; the
CAV ``v_C`` is the unit normal of its decision boundary, pointing towards the concept.

**Directional derivative.** ``S_{C,k,l}(x) = grad_{f_l} h_k(f_l(x)) . v_C``, where ``h_k`` maps
the layer's activations to the *logit* of class ``k`` (not its softmax probability: the
probability's gradient is the logit's gradient minus a mix of the other classes' gradients, so
its sign also depends on them). Positive: moving the activations towards the concept raises
the class logit.

**TCAV score.** ``TCAV_{C,k,l} = |{x in X_k : S_{C,k,l}(x) > 0}| / |X_k|``, the fraction of the
class's images whose logit rises along the concept. One CAV is one draw: train CAVs of the
concept against ``R`` different random sets and, as the null distribution, CAVs of random sets
against each other (set ``i`` against set ``i+1 mod R``), and compare the two samples of TCAV
scores with a two-sided t-test. That is what the authors' reference code does
(``scipy.stats.ttest_ind(random_scores, concept_scores)``, as does captum's TCAV tutorial); the
paper's text states the null hypothesis as "a TCAV score of 0.5" (a one-sample test), which
assumes the random CAVs' scores centre on 0.5. They need not: when most images share one
gradient direction a random CAV scores near 0 or 1, so we test against the random CAVs.

*Multiple testing.* Every (concept, class, layer) triple tested is another test at level
``alpha``: with 20 of them, one "significant" concept is expected by chance. Correct for it
(Bonferroni, as the paper does: compare p with ``alpha / n_tests``) before claiming anything.

All CAVs are seeded (the seed picks the held-out split that measures a CAV's accuracy), and
every function gives the same answer for any ``batch_size``. The gradients of all targets and
all CAVs come from one forward pass and one batched backward pass per chunk of images.

**Data attribution.** :func:`data_attribution` scores every training image by how much it
supports the prediction on a test image, in the penultimate (spatially pooled) feature space:
``"cosine"`` is the kNN view (nearest training images, Papernot & McDaniel 2018's DkNN idea);
``"representer"`` weights each training image's feature similarity ``f_i . f_t`` by its
representer coefficient ``alpha_ik = -(softmax_k(x_i) - [y_i = k])`` (Yeh et al., 2018), i.e.
how hard the training loss pulls its logit ``k`` (positive: supports class ``k``; the paper's
exact form needs a last layer trained with L2 regularisation, its ``1/(2 lambda n)`` factor only
scales the scores). TracIn (Pruthi et al., 2020) needs training checkpoints, which the shipped
zoo models do not keep.
"""
from ...zoo.concepts import COLOURS, ROUND_SHAPES, concept_images, random_sets
from .data_attribution import DataAttributionResult, data_attribution, penultimate_features
from .tcav import (
    CAV,
    TCAVResult,
    compute_cav,
    directional_derivatives,
    layer_activations,
    tcav,
    tcav_scores,
    tcav_significance,
)

__all__ = [
    "ROUND_SHAPES",
    "COLOURS",
    "concept_images",
    "random_sets",
    "layer_activations",
    "CAV",
    "compute_cav",
    "directional_derivatives",
    "tcav_scores",
    "tcav_significance",
    "TCAVResult",
    "tcav",
    "penultimate_features",
    "DataAttributionResult",
    "data_attribution",
]
