"""`make lab` starts JupyterLab at the course root; check that such a server answers on its port."""
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_jupyterlab_answers_on_its_port(tmp_path):
    port = _free_port()
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
           "--ServerApp.token=course-test", f"--notebook-dir={ROOT}", "--allow-root"]
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path), JUPYTER_CONFIG_DIR=str(tmp_path / "cfg"))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents/lectures?token=course-test", timeout=2) as r:
                    body = r.read().decode()
                    break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise AssertionError("JupyterLab did not answer within 60 s")
                time.sleep(0.5)
        assert "00_why_interpretability.ipynb" in body
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/lab?token=course-test", timeout=5) as r:
            assert r.status == 200 and "JupyterLab" in r.read().decode()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
