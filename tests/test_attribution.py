"""Gradient attributions against closed forms and against captum used directly."""
import pytest
import torch
from torch import nn

from course_lib.methods.attribution import grad_cam, integrated_gradients, saliency


def _linear():
    torch.manual_seed(0)
    model = nn.Linear(6, 3).eval()
    model.requires_grad_(False)
    return model


def test_saliency_of_a_linear_model_is_its_weights():
    model = _linear()
    x = torch.randn(4, 6)
    out = saliency(model, x, target=2)
    torch.testing.assert_close(out, model.weight[2].abs().expand(4, -1))


def test_integrated_gradients_of_a_linear_model_is_exact():
    model = _linear()
    x, b = torch.randn(5, 6), torch.randn(6)
    attr, delta = integrated_gradients(model, x, target=1, baseline=b, return_delta=True)
    torch.testing.assert_close(attr, (x - b) * model.weight[1], atol=1e-5, rtol=1e-5)
    assert delta.abs().max() < 1e-4


def test_integrated_gradients_completeness_on_the_cnn(scenes_cnn, scenes_test):
    x = scenes_test.images[:2]
    target = scenes_test.labels[:2]
    attr, delta = integrated_gradients(scenes_cnn, x, target=target, baseline=0.5, n_steps=128, return_delta=True)
    with torch.no_grad():
        gap = scenes_cnn(x).gather(1, target[:, None])[:, 0] - scenes_cnn(torch.full_like(x, 0.5)).gather(1, target[:, None])[:, 0]
    torch.testing.assert_close(attr.sum((1, 2, 3)), gap, atol=0.05 * gap.abs().max().item(), rtol=0.0)


def test_grad_cam_equals_class_activation_mapping_for_a_gap_network(scenes_cnn, scenes_test):
    """With global average pooling and a linear head, d y_c / d A_k(i, j) = w_ck / (h w), so
    Grad-CAM = ReLU(sum_k w_ck A_k) / (h w): the CAM of Zhou et al. (2016)."""
    from course_lib.hooks import capture

    x = scenes_test.images[:3]
    target = 4
    with capture(scenes_cnn, "features") as acts:
        scenes_cnn(x)
    A = acts["features"]  # (B, K, h, w)
    cam = torch.einsum("k,bkhw->bhw", scenes_cnn.fc.weight[target], A).relu() / (A.shape[2] * A.shape[3])
    torch.testing.assert_close(grad_cam(scenes_cnn, x, target, upsample=False), cam, atol=1e-5, rtol=1e-4)
    assert grad_cam(scenes_cnn, x, target).shape == (3, 64, 64)


def test_attributions_refuse_a_model_in_train_mode(scenes_cnn, scenes_test):
    scenes_cnn.train()
    try:
        with pytest.raises(ValueError, match="eval"):
            saliency(scenes_cnn, scenes_test.images[:1], 0)
    finally:
        scenes_cnn.eval()
