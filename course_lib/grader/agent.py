"""The student's process: runs inside the sandbox and answers the checker's requests.

It runs the notebook's non-test cells in an IPython shell, and on request gives a variable's
value, calls a function, reads an attribute, or runs a backward pass through a result it returned.
Nothing here is trusted by the checker: a submission can rewrite this module's objects, but all it
can change is what its own process answers, and answers are data (see ``wire``).

Started as ``python .../course_lib/grader/agent.py IN_FD OUT_FD``: as a script, so that nothing is imported
(torch included) before the notebook asks for it.
"""
from __future__ import annotations

import io
import pickle
import sys
import traceback

if __package__:
    from . import wire
else:  # run as a script (python .../grader/agent.py): the course_lib package (and torch) is not imported
    import wire

OUTPUT_CAP = 200_000  # characters of stdout/stderr kept per cell; the rest is counted, not stored
DISPLAY_CAP = 50  # rich outputs kept per cell


class _Capped(io.TextIOBase):
    def __init__(self, name: str, sink: list):
        self.name, self.sink, self.size, self.dropped = name, sink, 0, 0

    def writable(self):
        return True

    def write(self, s):
        s = str(s)
        room = OUTPUT_CAP - self.size
        if room > 0:
            self.sink.append((self.name, s[:room]))
        self.size += len(s)
        self.dropped += max(0, len(s) - max(room, 0))
        return len(s)


class Callback:
    """A callable of the checker: calling it asks the checker to run it (on data)."""

    def __init__(self, agent: "Agent", cb: int, name: str):
        self._agent, self._cb, self.__name__ = agent, cb, name

    def __call__(self, *args, **kwargs):
        return self._agent.callback(self._cb, args, kwargs)

    def __getattr__(self, attr):  # e.g. a game's n_players: read from the checker's object
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        return self._agent.callback(self._cb, (), {}, attr=attr)

    def __repr__(self):
        return f"<grader callback {self.__name__}>"


def _grad_function():
    import torch

    class _CallbackGrad(torch.autograd.Function):
        """Outputs of a checker callable that depend on tensors of this process: their backward
        asks the checker for the gradients with respect to those tensors."""

        @staticmethod
        def forward(ctx, link, n_in, *tensors):
            ctx.link, ctx.n_in = link, n_in
            return tuple(t.clone() for t in tensors[n_in:])

        @staticmethod
        def backward(ctx, *grads):
            agent, cbrid = ctx.link
            got = agent.callback_backward(cbrid, list(grads))
            got = list(got) + [None] * (ctx.n_in - len(got))
            return (None, None, *got[: ctx.n_in], *([None] * len(grads)))

    return _CallbackGrad


class Agent:
    def __init__(self, fd_in: int, fd_out: int):
        from IPython.core.interactiveshell import InteractiveShell

        self.fd_in, self.fd_out = fd_in, fd_out
        self.shell = InteractiveShell.instance()
        self.shell._showtraceback = lambda *a, **k: None  # errors are reported from the exception itself
        self.ns = self.shell.user_ns
        self.handles: dict[int, object] = {}
        self._next = 0
        self._by_id: dict[int, int] = {}
        self.cache: dict[str, object] = {}  # objects the checker sent by value, by its key
        self._cache_ids: dict[int, str] = {}
        self._versions: dict[str, dict] = {}  # key -> tensor versions when it arrived
        self._param_ids: dict[int, tuple] = {}  # id(tensor) -> (key, name, tensor, version)
        self.results: dict[int, tuple] = {}  # result id -> (output tensors, input leaves) for backward
        self._sink: list = []
        self._displays: list = []
        try:
            self.shell.enable_matplotlib("inline")
        except Exception:  # noqa: BLE001
            pass
        from IPython.core.displaypub import DisplayPublisher

        agent = self

        class _Pub(DisplayPublisher):
            def publish(self, data, metadata=None, source=None, *, transient=None, update=False, **kw):
                if len(agent._displays) < DISPLAY_CAP:
                    keep = {k: v for k, v in data.items() if k in ("text/plain", "image/png", "text/html", "text/markdown")}
                    agent._displays.append({k: (v if isinstance(v, str) else str(v)) for k, v in keep.items()})
                    agent._sink.append(("display", len(agent._displays) - 1))

        self.shell.display_pub = _Pub(shell=self.shell)

    # ---------------------------------------------------------------------------- handles
    def handle_of(self, obj) -> int:
        key = id(obj)
        h = self._by_id.get(key)
        if h is None or self.handles.get(h) is not obj:
            self._next += 1
            h = self._next
            self.handles[h] = obj
            self._by_id[key] = h
        return h

    def _obj(self, h):
        if h not in self.handles:
            raise KeyError(f"no object {h}")
        return self.handles[h]

    def _loads(self, blob: bytes, leaves: list | None = None):
        agent = self

        class _U(pickle.Unpickler):
            def persistent_load(self, pid):
                kind, key = pid[0], pid[1]
                if kind == "cb":
                    return Callback(agent, key, pid[2])
                if kind == "h":
                    return agent._obj(key)
                if kind == "obj":
                    return agent.cache[key]
                if kind == "gin":
                    return leaves[key]
                if kind == "param":
                    return agent._tensors_of(agent.cache[key])[pid[2]]
                if kind == "gout":
                    return leaves[key]
                raise pickle.UnpicklingError(f"unknown reference {kind}")

        return _U(io.BytesIO(blob)).load()

    def cref(self, obj):
        """The checker's key when ``obj`` is this process's copy of one of the checker's objects (or an
        unchanged tensor of one: a model's embedding matrix need not travel back to the checker)."""
        key = self._cache_ids.get(id(obj))
        if key is not None and self.cache.get(key) is obj:
            return key
        ref = self._param_ids.get(id(obj))
        if ref is not None:
            key, name, t, version = ref
            if t is obj and obj._version == version and self._versions.get(key, {}).get(name) == version:
                return f"{key}:{name}"
        return None

    @staticmethod
    def _tensors_of(obj) -> dict:
        import torch

        if isinstance(obj, torch.nn.Module):
            return dict(obj.state_dict(keep_vars=True))
        return {}

    def _snapshot(self, key):
        tensors = self._tensors_of(self.cache[key])
        self._versions[key] = {k: t._version for k, t in tensors.items()}
        for k, t in tensors.items():
            self._param_ids[id(t)] = (key, k, t, t._version)

    def sync(self) -> dict:
        """What the student's code changed in the checker's objects: tensors, gradients, and the plain
        attributes of modules the test defined itself (a spy's counters), to be copied back."""
        if "torch" not in sys.modules or not self.cache:
            return {}
        import torch

        out = {}
        for key, obj in self.cache.items():
            if not isinstance(obj, torch.nn.Module):
                continue
            tensors, old = self._tensors_of(obj), self._versions.get(key, {})
            changed = {k: t.detach() for k, t in tensors.items() if t._version != old.get(k)}
            grads = {k: t.grad.detach() for k, t in tensors.items() if getattr(t, "grad", None) is not None}
            attrs = {}
            for path, m in obj.named_modules():
                if type(m).__module__ == "__main__":
                    plain = {a: v for a, v in vars(m).items() if not a.startswith("_") and not isinstance(v, torch.nn.Module)
                             and isinstance(v, (bool, int, float, str, list, tuple, dict, torch.Tensor, type(None)))}
                    if plain:
                        attrs[path] = plain
            if changed or grads or attrs:
                out[key] = {"tensors": changed, "grads": grads, "attrs": attrs, "training": obj.training}
            self._snapshot(key)
        return out

    # ------------------------------------------------------------------------------ replies
    def _reply_value(self, value, leaves: list | None = None, sync: bool = False):
        buffers: list = []
        grad_out: list = []
        desc = wire.encode(value, buffers, self.handle_of, grad_out=grad_out, cref=self.cref)
        header = {"op": "reply", "value": desc}
        if sync:
            header["sync"] = wire.encode(self.sync(), buffers, self.handle_of)
        if grad_out:
            self._next += 1
            rid = self._next
            self.results[rid] = (grad_out, leaves or [])
            header["rid"] = rid
        wire.send(self.fd_out, header, buffers)

    def _reply_error(self, err: BaseException):
        tb = traceback.format_exception(type(err), err, err.__traceback__)
        # keep the student's frames, not the agent's
        tb = [line for line in tb if "course_lib/grader/" not in line]
        wire.send(self.fd_out, {"op": "reply", "error": {
            "ename": type(err).__name__, "evalue": str(err)[:4000], "traceback": "".join(tb)[-8000:],
            "builtin": type(err).__module__ == "builtins"}})

    # ------------------------------------------------------------------------------ requests
    def run_cell(self, source: str) -> dict:
        self._sink, self._displays = [], []
        out, err = _Capped("stdout", self._sink), _Capped("stderr", self._sink)
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = out, err
        error = None
        try:
            res = self.shell.run_cell(source, store_history=True, silent=False)
            exc = res.error_in_exec or res.error_before_exec
            if exc is not None:
                error = exc
        except BaseException as e:  # noqa: BLE001
            error = e
        finally:
            try:
                self.shell.events.trigger("post_execute")  # the inline backend shows figures here
            except Exception:  # noqa: BLE001
                pass
            sys.stdout, sys.stderr = saved
        outputs = []
        for name, item in self._sink:
            if name == "display":
                outputs.append({"output_type": "display_data", "data": self._displays[item], "metadata": {}})
            elif outputs and outputs[-1].get("name") == name and outputs[-1]["output_type"] == "stream":
                outputs[-1]["text"] += item
            else:
                outputs.append({"output_type": "stream", "name": name, "text": item})
        for s in (out, err):
            if s.dropped:
                outputs.append({"output_type": "stream", "name": "stdout",
                                "text": f"\n[{s.dropped} more characters of {s.name} were not kept]\n"})
        reply = {"op": "reply", "outputs": outputs}
        if error is not None:
            tb = traceback.format_exception(type(error), error, error.__traceback__)
            tb = [line for line in tb if "course_lib/grader/" not in line and "IPython/core/" not in line]
            reply["error"] = {"ename": type(error).__name__, "evalue": str(error)[:4000], "traceback": "".join(tb)[-8000:]}
        return reply

    def dispatch(self, header: dict, buffers: list) -> None:
        op = header.get("op")
        try:
            if op == "run":
                reply = self.run_cell(header["source"])
                self.results.clear()
                return wire.send(self.fd_out, reply)
            if op == "forget":  # the end of a test cell: its objects and gradient graphs can go
                self.results.clear()
                self.handles.clear()
                self._by_id.clear()
                return wire.send(self.fd_out, {"op": "reply", "value": None})
            if op == "get":
                name = header["name"]
                if name not in self.ns:
                    return wire.send(self.fd_out, {"op": "reply", "missing": True})
                return self._reply_value(self.ns[name])
            if op == "set":
                self.ns[header["name"]] = self._loads(buffers[0])
                return wire.send(self.fd_out, {"op": "reply", "value": None})
            if op == "put":
                key = header["key"]
                old = self.cache.get(key)
                obj = self._loads(buffers[0])
                self.cache[key] = obj
                self._cache_ids[id(obj)] = key
                if old is not None:
                    self._cache_ids.pop(id(old), None)
                self._snapshot(key)
                return wire.send(self.fd_out, {"op": "reply", "value": None})
            if op == "call":
                leaves = self._loads(buffers[1]) if len(buffers) > 1 else []
                args, kwargs = self._loads(buffers[0], leaves)
                value = self._obj(header["h"])(*args, **kwargs)
                return self._reply_value(value, leaves, sync=True)
            if op == "getattr":
                return self._reply_value(getattr(self._obj(header["h"]), header["attr"]))
            if op == "setattr":
                setattr(self._obj(header["h"]), header["attr"], self._loads(buffers[0]))
                return wire.send(self.fd_out, {"op": "reply", "value": None})
            if op == "getitem":
                return self._reply_value(self._obj(header["h"])[self._loads(buffers[0])])
            if op == "len":
                return self._reply_value(len(self._obj(header["h"])))
            if op == "list":
                return self._reply_value(list(self._obj(header["h"])))
            if op == "repr":
                return self._reply_value(repr(self._obj(header["h"]))[:2000])
            if op == "backward":
                import torch

                outs, leaves = self.results[header["rid"]]
                grads = self._loads(buffers[0])
                pairs = [(o, g) for o, g in zip(outs, grads) if g is not None]
                for leaf in leaves:
                    leaf.grad = None
                torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs], retain_graph=True)
                return self._reply_value([None if leaf.grad is None else leaf.grad.detach() for leaf in leaves], sync=True)
            raise ValueError(f"unknown request {op!r}")
        except BaseException as e:  # noqa: BLE001
            if isinstance(e, (EOFError, wire.WireError)):
                raise
            self._reply_error(e)

    def callback(self, cb: int, args, kwargs, attr: str | None = None):
        buffers: list = []
        grad_in: list = []
        desc = wire.encode([list(args), kwargs], buffers, self.handle_of, grad_out=grad_in, cref=self.cref)
        head = {"op": "callback", "cb": cb, "args": desc}
        if attr is not None:
            head["attr"] = attr
        wire.send(self.fd_out, head, buffers)
        header, bufs = self._wait("cbreply")
        if "error" in header:
            e = header["error"]
            if e.get("ename") == "AttributeError":
                raise AttributeError(e.get("evalue"))
            raise RuntimeError(f"{e.get('ename')}: {e.get('evalue')}")
        for h, i in (header.get("gens") or {}).items():  # generators the checker drew from
            import torch

            g = self.handles.get(int(h))
            if isinstance(g, torch.Generator):
                g.set_state(torch.frombuffer(bytearray(bufs[i]), dtype=torch.uint8))
        if "cbrid" not in header:
            return self._loads(bufs[0])
        raw = self._loads(bufs[1])
        attached = _grad_function().apply((self, header["cbrid"]), len(grad_in), *grad_in, *raw)
        return self._loads(bufs[0], list(attached))

    def callback_backward(self, cbrid: int, grads: list):
        buffers: list = []
        desc = wire.encode(grads, buffers, self.handle_of)
        wire.send(self.fd_out, {"op": "cbbackward", "cbrid": cbrid, "grads": desc}, buffers)
        header, bufs = self._wait("cbreply")
        if "error" in header:
            e = header["error"]
            raise RuntimeError(f"{e.get('ename')}: {e.get('evalue')}")
        return self._loads(bufs[0])

    def _wait(self, op: str):
        while True:
            header, bufs = wire.recv(self.fd_in)
            if header.get("op") == op:
                return header, bufs
            self.dispatch(header, bufs)

    def serve(self):
        while True:
            try:
                header, buffers = wire.recv(self.fd_in)
            except EOFError:
                return
            if header.get("op") == "exit":
                return
            self.dispatch(header, buffers)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    fd_in, fd_out = int(argv[0]), int(argv[1])
    sys.stdin = open("/dev/null")
    Agent(fd_in, fd_out).serve()


if __name__ == "__main__":
    main()
