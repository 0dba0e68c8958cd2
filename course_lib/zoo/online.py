"""The online tier: standard pretrained models, used only when their weights are already cached.

Nothing here downloads. If the weights are missing, the error names the one command that
fetches them (run it where there is internet, or ask the instructor to run it for the hub).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision's file names for the ImageNet weights (V1), in torch.hub's checkpoint folder.
TORCHVISION = {
    "resnet18": ("resnet18", "resnet18-f37072fd.pth", "ResNet18_Weights"),
    "googlenet": ("googlenet", "googlenet-1378be20.pth", "GoogLeNet_Weights"),
}
HF = {"gpt2": "gpt2"}


class Normalised(nn.Module):
    """Wraps an ImageNet model so it takes pixels in [0, 1] and normalises inside."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def torchvision_checkpoint(name: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION[name][1]


def fetch_command(name: str) -> str:
    if name in TORCHVISION:
        arch, _, weights = TORCHVISION[name]
        return f'python -c "import torchvision; torchvision.models.{arch}(weights=\'{weights}.IMAGENET1K_V1\')"'
    hf = HF[name]
    return (f'python -c "import transformers as t; t.AutoModelForCausalLM.from_pretrained(\'{hf}\'); '
            f't.AutoTokenizer.from_pretrained(\'{hf}\')"')


def is_cached(name: str) -> bool:
    if name in TORCHVISION:
        return torchvision_checkpoint(name).is_file()
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(HF[name], "config.json"), str)
    except Exception:
        return False


def load_online(name: str, device: torch.device):
    """An ImageNet model (wrapped to take [0, 1] pixels) or ``(model, tokenizer)`` for GPT-2, from the local caches only."""
    if not is_cached(name):
        raise FileNotFoundError(
            f"{name} is an online-tier model and its weights are not in the local cache. With internet access, run:\n"
            f"    {fetch_command(name)}\n"
            "(on a hub, the instructor runs it once for everyone). The course notebooks never need it."
        )
    if name in TORCHVISION:
        import torchvision

        arch, _, _ = TORCHVISION[name]
        # torchvision builds GoogLeNet with transform_input=True whenever it loads the ImageNet weights
        kwargs = {"aux_logits": False, "init_weights": False, "transform_input": True} if arch == "googlenet" else {}
        net = getattr(torchvision.models, arch)(weights=None, **kwargs)
        state = torch.load(torchvision_checkpoint(name), map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2."))}
        net.load_state_dict(state)
        return Normalised(net).to(device).eval()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(HF[name], local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(HF[name], local_files_only=True).to(device).eval()
    model.requires_grad_(False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok
