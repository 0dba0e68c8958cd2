"""A corrupted or truncated cached file is never loaded (issue 26): it is detected by the sha256
recorded when it was written, then rebuilt or refused with the command that fetches it.
Real damaged files in a temporary COURSE_LIB_HOME; nothing is downloaded."""
from __future__ import annotations

import json

import pytest
import torch

from course_lib.zoo import cache, corpus, llm


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_LIB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("COURSE_LIB_USER_CACHE", str(tmp_path / "user"))
    return tmp_path / "home"


def _folder(path, files: dict[str, bytes]):
    path.mkdir(parents=True)
    for name, data in files.items():
        (path / name).write_bytes(data)
    return path


def _truncate(f):
    f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])


def _flip(f):
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0x01
    f.write_bytes(bytes(b))


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "manifest"])
def test_folder_problem_finds_every_damage(tmp_path, damage):
    d = _folder(tmp_path / "f", {"model.safetensors": b"w" * 1000, "config.json": b'{"a": 1}', "tokenizer.json": b"{}"})
    cache.write_manifest(d, {"source": "x"})
    assert cache.folder_problem(d) is None
    f = d / "config.json"
    if damage == "truncate":
        _truncate(f)
    elif damage == "flip":
        _flip(f)
    elif damage == "delete":
        f.unlink()
    else:
        (d / "manifest.json").write_text('{"files": ')  # a truncated manifest
    assert cache.folder_problem(d) is not None


def test_file_problem_and_checksum(tmp_path):
    f = tmp_path / "run.pt"
    torch.save({"a": torch.arange(100)}, f)
    assert cache.file_problem(f) is not None  # no checksum recorded
    cache.write_checksum(f)
    assert cache.file_problem(f) is None
    _truncate(f)
    assert "damaged or truncated" in cache.file_problem(f)


@pytest.mark.parametrize("victim", ["model.safetensors", "config.json", "tokenizer.json"])
def test_damaged_smollm2_cache_is_not_loaded(home, victim):
    """Weights, config or tokenizer damaged: the folder is removed (it would be rebuilt from the GGUF),
    and with no GGUF the error names the fetch command."""
    d = _folder(home / "models" / llm.NAME / "float32",
                {"model.safetensors": b"w" * 4096, "config.json": b'{"num_hidden_layers": 30}', "tokenizer.json": b"{}"})
    cache.write_manifest(d, {"source": llm.GGUF_FILE, "model.safetensors": cache.sha256(d / "model.safetensors")})
    _flip(d / victim)
    logs = []
    with pytest.raises(FileNotFoundError, match="course-lib fetch smollm2-135m"):
        llm.load_smollm2("cpu", log=logs.append)
    assert not d.exists(), "the damaged folder should have been removed so that it is rebuilt"
    assert any("not used" in m for m in logs)


def test_damaged_gguf_is_refused_with_the_fetch_command(home):
    g = llm.gguf_path()
    g.parent.mkdir(parents=True)
    g.write_bytes(b"GGUF" + b"\0" * 100)  # truncated / not the file
    with pytest.raises(cache.ChecksumError, match="course-lib fetch smollm2-135m --force"):
        llm.load_smollm2("cpu", log=lambda m: None)


def test_smollm2_manifest_of_an_older_course_lib_is_upgraded_not_trusted_blindly(home):
    d = _folder(home / "models" / llm.NAME / "float32", {"model.safetensors": b"w" * 4096, "config.json": b"{}"})
    (d / "manifest.json").write_text(json.dumps({"model.safetensors": "0" * 64}))  # old format, wrong sha
    assert not llm._legacy_ok(d)
    (d / "manifest.json").write_text(json.dumps({"model.safetensors": cache.sha256(d / "model.safetensors")}))
    assert llm._legacy_ok(d)


def test_damaged_corpus_is_removed_and_fetched_again(home):
    d = _folder(home / "data" / corpus.NAME, {"hamlet.md": b"**HAMLET**\nTo be.\n" * 50, "macbeth.md": b"**MACBETH**\nx\n"})
    cache.write_manifest(d, {"source": corpus.WHEEL_FILE})
    (d / "DONE").write_text(corpus.WHEEL_SHA256 + "\n")
    assert corpus.corpus_dir() == d
    _truncate(d / "hamlet.md")
    assert corpus.corpus_dir() is None  # not used; fetch_corpus would download it again
    assert not d.exists()


def test_damaged_training_lens_cache_is_trained_again(home, monkeypatch):
    from course_lib.methods import training_lens as TL

    config = TL.TrainConfig()
    path = TL._cache_paths(config, 0)[0]
    path.parent.mkdir(parents=True)
    torch.save({"steps": [0]}, path)
    cache.write_checksum(path)
    _flip(path)
    trained = []

    def fake_train(config, *, seed, progress):
        trained.append(seed)
        return TL.TrainingRun(config, seed, [0], [{}], [1.0], torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 1, 1),
                              torch.zeros(1, 2), 0.0)

    monkeypatch.setattr(TL, "train_induction", fake_train)
    TL.load_or_train(config, seed=0, progress=False)
    assert trained == [0], "a damaged cached run was loaded instead of trained again"
    assert cache.file_problem(path) is None  # the new run was saved with its checksum
