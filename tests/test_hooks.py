import pytest
import torch
import torch.nn.functional as F

from course_lib.hooks import capture, get_module, patch


def test_capture_records_what_the_module_computes(scenes_cnn, scenes_test):
    x = scenes_test.images[:3]
    with capture(scenes_cnn, ["features", "fc"]) as acts:
        logits = scenes_cnn(x)
    # recompute by hand from the layers
    h = (x - scenes_cnn.mean) / scenes_cnn.std
    h = F.max_pool2d(scenes_cnn.conv1(h), 2)
    h = F.max_pool2d(scenes_cnn.conv2(h), 2)
    h = F.max_pool2d(scenes_cnn.conv3(h), 2)
    feats = scenes_cnn.features(h)
    torch.testing.assert_close(acts["features"], feats)
    torch.testing.assert_close(acts["fc"], logits)
    assert not scenes_cnn.features._forward_hooks, "hooks must be removed after the block"


def test_hooks_are_removed_when_the_block_raises(scenes_cnn, scenes_test):
    with pytest.raises(RuntimeError):
        with patch(scenes_cnn, "features", lambda out: out * 0):
            raise RuntimeError("a failing cell")
    assert not scenes_cnn.features._forward_hooks
    with pytest.raises(RuntimeError):
        with capture(scenes_cnn, "conv1"):
            raise RuntimeError("boom")
    assert not scenes_cnn.conv1._forward_hooks


def test_patch_changes_the_output_as_computed_by_hand(scenes_cnn, scenes_test):
    x = scenes_test.images[:2]
    with patch(scenes_cnn, "features", lambda out: torch.zeros_like(out)):
        out = scenes_cnn(x)
    torch.testing.assert_close(out, scenes_cnn.fc.bias.expand(2, -1))  # pooled zeros -> bias only
    assert not torch.allclose(scenes_cnn(x), out)


def test_unknown_module_names_suggest_close_ones(scenes_cnn):
    with pytest.raises(KeyError, match="'features'"):
        get_module(scenes_cnn, "feature")
