"""The checker's side of the channel: requests to the student's process, and proxies for its objects.

A test cell in the checker sees the student's functions and objects as :class:`Remote` proxies:
calling one runs the student's code in the student's process, with the arguments pickled over;
what comes back is data (``wire.decode``). A tensor the student's code returns with a gradient
graph comes back attached to the checker's graph by :class:`_RemoteGrad`, so ``loss.backward()``
in a test cell runs the backward pass in the student's process and brings the gradients home.
"""
from __future__ import annotations

import builtins
import os
import select
import time


if __package__:
    from . import wire
    from .outbound import Outbound, Remote, _collect, _detached, torch
else:
    import wire
    from outbound import Outbound, Remote, _collect, _detached, torch




class StudentError(Exception):
    """An exception raised by the student's code that is not a builtin one (its name is kept)."""


class StudentDead(RuntimeError):
    """The student's process has ended; nothing more can be asked of it."""


class CellTimeout(RuntimeError):
    pass


def _rebuild_error(err: dict) -> BaseException:
    name, msg = str(err.get("ename", "Error")), str(err.get("evalue", ""))
    typ = getattr(builtins, name, None)
    if err.get("builtin") and isinstance(typ, type) and issubclass(typ, Exception) and typ not in (StopIteration,):
        try:
            return typ(msg)
        except Exception:  # noqa: BLE001
            pass
    return StudentError(f"{name}: {msg}")


_REMOTE_GRAD = None


def _remote_grad():
    """The autograd Function that attaches a student's results to the checker's graph (made on first use)."""
    global _REMOTE_GRAD
    if _REMOTE_GRAD is None:
        class _RemoteGrad(torch.autograd.Function):
            @staticmethod
            def forward(ctx, link, n_in, n_out, *tensors):
                ctx.link, ctx.n_in, ctx.n_out = link, n_in, n_out
                outs = tensors[n_in + 1:]
                return tuple(o.clone() for o in outs)

            @staticmethod
            def backward(ctx, *grads):
                student, rid = ctx.link
                in_grads = student.backward(rid, list(grads))
                in_grads = list(in_grads) + [None] * (ctx.n_in - len(in_grads))
                return (None, None, None, *in_grads[: ctx.n_in], None, *([None] * ctx.n_out))

        _REMOTE_GRAD = _RemoteGrad
    return _REMOTE_GRAD


class Student(Outbound):
    """Requests to one student's process (a sandbox), with a deadline per cell."""

    def __init__(self, sandbox, *, timeout: float):
        self.sb, self.timeout = sandbox, timeout
        os.set_blocking(sandbox.fd_to, False)  # a student's process that stops reading cannot block the checker
        self.deadline: float | None = None
        self.dead: str | None = None
        # the test's callables the student's process may call back: valid for the test cell that sent them, or
        # while a name the test set (globals()[name] = ...) or a kept object (a model, a spy) still holds them
        self.callbacks: dict[int, object] = {}
        self._cb_ids: dict[int, int] = {}
        self._next_cb = 0
        self._cb_collect: list | None = None
        self._persist_cbs: set[int] = set()
        self._bound_cbs: dict[str, set[int]] = {}
        self._next_rid = 0
        self._undo: dict[int, dict] = {}  # what the student's code changed in the checker's models, this test cell
        self._sent: dict[int, tuple] = {}  # id(obj) -> (obj, fingerprint): objects the student's process holds a copy of
        self._param_ref: dict[int, tuple] = {}  # id(tensor) -> (key, name) of a tensor of such an object
        self._gens: dict[int, torch.Generator] = {}  # the student's generators, as the checker's copies
        self._cb_results: dict[int, tuple] = {}
        self.stats = {"requests": 0, "callbacks": 0, "bytes_in": 0, "bytes_out": 0, "seconds_in_callbacks": 0.0}

    # ------------------------------------------------------------------------ pickling out
    # ---------------------------------------------------------------------------- channel
    def _check(self):
        if self.dead:
            raise StudentDead(self.dead)

    def _die(self, why: str):
        if self.dead is None:
            if self.sb.oom_killed():
                why = "it ran out of memory (the limit per submission is set in nbgrader_config.py)"
            self.dead = why
        self.sb.close()

    def _recv(self):
        while True:
            left = None if self.deadline is None else self.deadline - time.monotonic()
            if left is not None and left <= 0:
                raise CellTimeout()
            r, _, _ = select.select([self.sb.fd_from], [], [], None if left is None else min(left, 1.0))
            if r:
                try:
                    h, bufs = wire.recv(self.sb.fd_from)
                    self._last_bufs = bufs
                    self.stats["bytes_in"] += sum(len(b) for b in bufs)
                    return h, bufs
                except (EOFError, OSError):
                    self._die("your notebook's process ended (it exited, crashed or was killed)")
                    raise StudentDead(self.dead) from None
                except wire.WireError as e:
                    self._die(f"your notebook's process sent something unreadable ({e})")
                    raise StudentDead(self.dead) from None
            if self.sb.proc.poll() is not None:
                self._die(f"your notebook's process ended (exit status {self.sb.proc.returncode})")
                raise StudentDead(self.dead)

    def request(self, header: dict, buffers=(), *, raw: bool = False):
        own = self.deadline is None  # a request outside a cell (fetching a name) gets a cell's time too
        if own:
            self.deadline = time.monotonic() + self.timeout
        try:
            return self._request(header, buffers, raw)
        finally:
            if own:
                self.deadline = None

    def _request(self, header: dict, buffers, raw: bool):
        self._check()
        self.stats["requests"] += 1
        self.stats["bytes_out"] += sum(len(b) for b in buffers)
        try:
            wire.send(self.sb.fd_to, header, list(buffers), deadline=self.deadline)
        except TimeoutError:
            self._die("your notebook's process stopped answering the grader")
            raise StudentDead(self.dead) from None
        except OSError:
            self._die("your notebook's process ended (it exited, crashed or was killed)")
            raise StudentDead(self.dead) from None
        try:
            while True:
                h, bufs = self._recv()
                if h.get("op") in ("callback", "cbbackward"):
                    t_cb = time.monotonic()
                    self._serve_callback(h, bufs)
                    self.stats["callbacks"] += 1
                    self.stats["seconds_in_callbacks"] += time.monotonic() - t_cb
                    continue
                if h.get("op") != "reply":
                    self._die("your notebook's process broke the grading protocol")
                    raise StudentDead(self.dead)
                if raw:
                    return h
                if "error" in h:
                    raise _rebuild_error(h["error"])
                return self._decode(h, bufs)
        except CellTimeout:
            self._stop_runaway()
            raise

    def _stop_runaway(self):
        """After a deadline: interrupt the student's code; if it does not stop within 5 s, end it."""
        if self.dead:
            return
        self.sb.interrupt()
        end = time.monotonic() + 5
        while time.monotonic() < end:
            r, _, _ = select.select([self.sb.fd_from], [], [], 0.5)
            if r:
                try:
                    h, _ = wire.recv(self.sb.fd_from)
                except (EOFError, OSError, wire.WireError):
                    break
                if h.get("op") == "reply":
                    return
        self._die("a cell ran past the time limit and ignored the interrupt, so the notebook's process was stopped")

    def _serve_callback(self, h, bufs):
        try:
            if h.get("op") == "cbbackward":
                outs, leaves = self._cb_results[h["cbrid"]]
                grads = wire.decode(h.get("grads"), bufs, self._handle)
                pairs = [(o, g) for o, g in zip(outs, grads) if g is not None]
                got = torch.autograd.grad([o for o, _ in pairs], leaves, [g for _, g in pairs], allow_unused=True,
                                          retain_graph=True) if pairs and leaves else [None] * len(leaves)
                return wire.send(self.sb.fd_to, {"op": "cbreply"}, [self._plain_dumps(list(got))], deadline=self.deadline)
            fn = self.callbacks.get(h.get("cb"))
            if fn is None:
                raise KeyError("no such callback")
            if "attr" in h:
                attr = str(h["attr"])
                if attr.startswith("_"):  # __globals__, __closure__, _memo: the test's insides stay here
                    raise AttributeError(f"{type(fn).__name__} object has no readable attribute {attr!r}")
                return wire.send(self.sb.fd_to, {"op": "cbreply"}, [self.dumps(getattr(fn, attr))], deadline=self.deadline)
            leaves: dict = {}
            self._touched_gens = {}
            args, kwargs = wire.decode(h.get("args"), bufs, self._handle, leaves=leaves)
            result = fn(*args, **kwargs)
            head, out = {"op": "cbreply"}, []
            grads_of = [leaves[i] for i in sorted(leaves)]
            found: list = []
            if grads_of:
                _collect(result, found)
            if found:
                self._next_rid += 1
                rid = self._next_rid
                self._cb_results[rid] = (found, grads_of)
                head["cbrid"] = rid
                marks = {id(t): i for i, t in enumerate(found)}
                out = [self._plain_dumps(result, marks), self._plain_dumps([t.detach() for t in found])]
            else:
                out = [self.dumps(_detached(result))]
            gens = {}
            for gh, g in self._touched_gens.items():
                out.append(g.get_state().numpy().tobytes())
                gens[str(gh)] = len(out) - 1
            head["gens"] = gens
            wire.send(self.sb.fd_to, head, out, deadline=self.deadline)
        except (CellTimeout, StudentDead):
            raise
        except Exception as e:  # noqa: BLE001
            error = {"ename": type(e).__name__, "evalue": str(e)[:2000]}
            wire.send(self.sb.fd_to, {"op": "cbreply", "error": error}, deadline=self.deadline)

    def _handle(self, desc):
        if "cref" in desc:
            key, _, name = desc["cref"].partition(":")
            obj, _ = self._sent.get(int(key) if key.isdigit() else -1, (None, None))
            if obj is None:
                raise wire.WireError("reference to an object the checker never sent")
            if name:  # one of its tensors, unchanged on both sides
                t = obj.state_dict(keep_vars=True).get(name) if isinstance(obj, torch.nn.Module) else None
                if t is None or not self._still_sent(key):
                    raise wire.WireError("reference to a tensor the checker does not have")
                return t.detach() if t.requires_grad and not desc.get("grad") else t
            return obj
        if "gen" in desc:
            g = self._gens.get(desc["h"])
            if g is None:
                g = self._gens[desc["h"]] = torch.Generator()
            g.set_state(torch.frombuffer(bytearray(desc["state"]), dtype=torch.uint8))
            if getattr(self, "_touched_gens", None) is not None:
                self._touched_gens[desc["h"]] = g
            return g
        return Remote(self, desc["h"], desc)

    def _decode(self, h, bufs, leaves=()):
        value = wire.decode(h.get("value"), bufs, self._handle)
        if "rid" not in h:
            return value
        # tensors with a gradient graph in the student's process: attach them to the checker's graph
        found: list = []
        _collect(value, found)
        if not found:
            return value
        raw = [t.detach() for t in found]
        ins = [orig for orig, _ in leaves]
        dummy = torch.zeros((), requires_grad=True)
        outs = _remote_grad().apply((self, h["rid"]), len(ins), len(raw), *ins, dummy, *raw)
        swap = {id(t): o for t, o in zip(found, outs)}

        def rebuild(v):
            if isinstance(v, torch.Tensor):
                return swap.get(id(v), v)
            if isinstance(v, (list, tuple, set, frozenset)):
                return type(v)(rebuild(x) for x in v)
            if isinstance(v, dict):
                return {k: rebuild(x) for k, x in v.items()}
            return v

        return rebuild(value)

    # --------------------------------------------------------------------------- requests
    def call(self, h: int, args, kwargs):
        leaves: list = []
        blob = self.dumps((list(args), dict(kwargs)), leaves)
        bufs = [blob]
        if leaves:
            bufs.append(self.dumps([copy for _, copy in leaves]))
        head = self.request({"op": "call", "h": h}, bufs, raw=True)
        if "error" in head:
            raise _rebuild_error(head["error"])
        got = self._last_bufs
        self.apply_sync(head.get("sync"), got)
        return self._decode(head, got, leaves)

    def backward(self, rid: int, grads: list):
        head = self.request({"op": "backward", "rid": rid}, [self._plain_dumps(grads)], raw=True)
        if "error" in head:
            raise _rebuild_error(head["error"])
        got = self._last_bufs
        self.apply_sync(head.get("sync"), got)
        return self._decode(head, got)

    def get(self, name: str):
        h = self.request({"op": "get", "name": name}, raw=True)
        if h.get("missing"):
            raise KeyError(name)
        if "error" in h:
            raise _rebuild_error(h["error"])
        return self._decode(h, self._last_bufs)

    def set(self, name: str, value) -> None:
        self._cb_collect = []
        try:
            blob = self.dumps(value)
            ids = set(self._cb_collect)
        finally:
            self._cb_collect = None
        self.request({"op": "set", "name": name}, [blob])
        self._bound_cbs[name] = ids

    def end_test(self) -> None:
        """The end of a test cell: its callbacks go (a reference implementation the student's code kept cannot
        answer a later test), except those a name or a kept object still holds; the checker's models are as
        before the cell; the student's process drops the cell's objects and gradient graphs."""
        keep = self._persist_cbs.union(*self._bound_cbs.values())
        self.callbacks = {i: f for i, f in self.callbacks.items() if i in keep}
        self._cb_ids = {k: i for k, i in self._cb_ids.items() if i in self.callbacks}
        self._cb_results.clear()
        self.restore_kept()
        if self.dead is None:
            self.request({"op": "forget"})

    def run(self, source: str) -> dict:
        return self.request({"op": "run", "source": source}, raw=True)

    def close(self):
        if not self.dead:
            try:
                wire.send(self.sb.fd_to, {"op": "exit"}, deadline=time.monotonic() + 2)
            except OSError:
                pass
        self.sb.close()
