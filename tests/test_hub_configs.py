"""The instructors' hub examples in jupyter/hub/: the z2jh config.yaml parses and uses only keys of the
z2jh reference; every `tljh-config set` in the TLJH recipe sets a key the TLJH documentation lists."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

HUB = Path(__file__).resolve().parents[1] / "jupyter" / "hub"

# Key paths of the z2jh chart's configuration, https://z2jh.jupyter.org/en/stable/resources/reference.html
# (checked against the chart's jupyterhub/values.schema.yaml, zero-to-jupyterhub-k8s main, 2026-07).
# Below a path marked "*" the content is free-form (Kubernetes objects, traitlets, file contents).
Z2JH_KEYS = {
    "singleuser.image.name", "singleuser.image.tag", "singleuser.image.pullPolicy",
    "singleuser.defaultUrl",
    "singleuser.cpu.limit", "singleuser.cpu.guarantee",
    "singleuser.memory.limit", "singleuser.memory.guarantee",
    "singleuser.extraEnv*",
    "singleuser.storage.capacity", "singleuser.storage.type",
    "singleuser.storage.extraVolumes*", "singleuser.storage.extraVolumeMounts*",
    "singleuser.extraFiles*",
    "hub.config*",
    "cull.enabled", "cull.timeout", "cull.every",
}
# What the course needs from the example: the image, limits, the shared cache and the exchange.
Z2JH_REQUIRED = {"singleuser.image.name", "singleuser.image.tag", "singleuser.cpu.limit", "singleuser.cpu.guarantee",
                 "singleuser.memory.limit", "singleuser.memory.guarantee", "singleuser.extraEnv",
                 "singleuser.storage.extraVolumes", "singleuser.storage.extraVolumeMounts"}

# `tljh-config set` keys the TLJH documentation lists:
# https://tljh.jupyter.org/en/latest/topic/tljh-config.html (limits.*, user_environment.default_app, http.*, https.*)
# https://tljh.jupyter.org/en/latest/topic/idle-culler.html (services.cull.*)
TLJH_KEYS = {
    "limits.memory", "limits.cpu", "user_environment.default_app", "base_url",
    "http.port", "https.port", "http.address", "https.address",
    "services.cull.timeout", "services.cull.every", "services.cull.max_age", "services.cull.remove_named_servers",
}


def key_paths(node, prefix: str = "") -> list[str]:
    """Dotted key paths of a mapping, stopping at the free-form paths of Z2JH_KEYS."""
    out = []
    for k, v in node.items():
        path = f"{prefix}{k}"
        if path + "*" in Z2JH_KEYS or not isinstance(v, dict):
            out.append(path)
        else:
            out += key_paths(v, path + ".")
    return out


def z2jh() -> dict:
    return yaml.safe_load((HUB / "z2jh-config.yaml").read_text())


def test_z2jh_config_uses_only_documented_keys():
    unknown = [p for p in key_paths(z2jh()) if p not in Z2JH_KEYS and p + "*" not in Z2JH_KEYS]
    assert not unknown, f"keys not in the z2jh reference list: {unknown}"
    assert Z2JH_REQUIRED <= set(key_paths(z2jh()))


def test_z2jh_cache_is_read_only_and_set_in_the_environment():
    su = z2jh()["singleuser"]
    assert su["extraEnv"]["COURSE_LIB_HOME"] == "/srv/course_lib"
    volumes = {v["name"]: v for v in su["storage"]["extraVolumes"]}
    mounts = {m["mountPath"]: m for m in su["storage"]["extraVolumeMounts"]}
    assert mounts["/srv/course_lib"]["readOnly"] is True and mounts["/srv/course_lib"]["name"] in volumes
    exchange = mounts["/srv/nbgrader/exchange"]
    assert exchange["name"] in volumes and not exchange.get("readOnly", False)
    config = su["extraFiles"]["nbgrader-config"]
    assert config["mountPath"] == "/etc/jupyter/nbgrader_config.py"
    assert 'c.Exchange.root = "/srv/nbgrader/exchange"' in config["stringData"]
    compile(config["stringData"], "nbgrader_config.py", "exec")
    assert su["cpu"]["guarantee"] <= su["cpu"]["limit"]


def shell_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```(?:bash|sh|shell)\n(.*?)^```", markdown, flags=re.S | re.M)


def test_tljh_recipe_sets_only_documented_keys():
    blocks = shell_blocks((HUB / "tljh.md").read_text())
    assert blocks, "tljh.md has no ```bash blocks"
    keys = []
    for block in blocks:
        for line in block.splitlines():
            if "tljh-config" not in line:
                continue
            words = shlex.split(line, comments=True)
            if "tljh-config" in words and words[words.index("tljh-config") + 1:][:1] == ["set"]:
                keys.append(words[words.index("tljh-config") + 2])
    assert {"limits.memory", "limits.cpu"} <= set(keys)
    unknown = [k for k in keys if k not in TLJH_KEYS]
    assert not unknown, f"tljh-config keys not in the TLJH documentation: {unknown}"


def test_tljh_recipe_sets_up_cache_and_exchange():
    text = (HUB / "tljh.md").read_text()
    assert "COURSE_LIB_HOME" in text and "/srv/course_lib" in text and "go-w" in text
    assert 'c.Exchange.root = "/srv/nbgrader/exchange"' in text and "chmod 0777 /srv/nbgrader/exchange" in text
