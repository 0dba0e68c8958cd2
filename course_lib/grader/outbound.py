"""What the checker sends to the student's process, and what it takes back into its own objects.

Values go over pickled (the student's process may unpickle anything: it can only hurt itself), with
three exceptions that keep the test's objects honest: the test's own callables stay in the checker and
travel as *callbacks*; models, optimizers and tokenizers are sent once and then named by identity (a
model's tensors too, so an optimizer steps the student's copy of that same model); and tensors that
need a gradient travel as *leaves*, so gradients can come back. What the student's code changes in
those kept objects comes back with every reply and is copied into the checker's objects
(:meth:`Outbound.apply_sync`).
"""
from __future__ import annotations

import io
import sys
import types

if __package__:
    from . import wire
else:
    import wire


class _LazyTorch:
    """torch, imported when first used: a notebook without tensors never pays for it."""

    def __getattr__(self, name):
        import torch as real

        globals()["torch"] = real
        return getattr(real, name)


torch = _LazyTorch()


def _has_torch() -> bool:
    return "torch" in sys.modules


class Remote:
    """An object that stays in the student's process."""

    __slots__ = ("_s", "_h", "_desc", "__weakref__")

    def __init__(self, student, h: int, desc: dict):
        object.__setattr__(self, "_s", student)
        object.__setattr__(self, "_h", h)
        object.__setattr__(self, "_desc", desc)

    @property
    def __class__(self):  # isinstance(proxy_of_a_module, torch.nn.Module) holds, as it would in one process
        return torch.nn.Module if self._desc.get("module") else Remote

    def __call__(self, *args, **kwargs):
        return self._s.call(self._h, args, kwargs)

    def __getattr__(self, attr):
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        return self._s.request({"op": "getattr", "h": self._h, "attr": attr})

    def __setattr__(self, attr, value):
        self._s.request({"op": "setattr", "h": self._h, "attr": attr}, [self._s.dumps(value)])

    def __getitem__(self, key):
        return self._s.request({"op": "getitem", "h": self._h}, [self._s.dumps(key)])

    def __len__(self):
        return int(self._s.request({"op": "len", "h": self._h}))

    def __iter__(self):
        return iter(self._s.request({"op": "list", "h": self._h}))

    def __repr__(self):
        try:
            return str(self._s.request({"op": "repr", "h": self._h}))
        except Exception:  # noqa: BLE001
            return f"<student's {self._desc.get('t', 'object')}>"

    __str__ = __repr__


def _collect(v, found: list) -> None:
    if not _has_torch():
        return
    if isinstance(v, torch.Tensor) and v.requires_grad:
        found.append(v)
    elif isinstance(v, (list, tuple, set, frozenset)):
        for x in v:
            _collect(x, found)
    elif isinstance(v, dict):
        for x in v.values():
            _collect(x, found)


def _detached(v):
    if not _has_torch():
        return v
    if isinstance(v, torch.Tensor):
        return v.detach() if v.requires_grad else v
    if type(v) in (list, tuple, set, frozenset):
        return type(v)(_detached(x) for x in v)
    if type(v) is dict:
        return {k: _detached(x) for k, x in v.items()}
    return v


def _is_method(fn) -> bool:
    """A function defined in a class body (``Spy.forward``): it travels with its class, by value."""
    parts = getattr(fn, "__qualname__", "").split(".")
    return len(parts) >= 2 and parts[-2] != "<locals>"


def _is_callback(obj) -> bool:
    """Callables that stay in the checker: the test's own functions, games, spies, references."""
    if isinstance(obj, (Remote, type, types.ModuleType)) or (_has_torch() and isinstance(obj, torch.nn.Module)):
        return False
    if isinstance(obj, types.FunctionType) and _is_method(obj):
        return False
    if isinstance(obj, (types.BuiltinFunctionType, types.BuiltinMethodType)):
        return False
    if isinstance(obj, (types.FunctionType, types.MethodType)):
        mod = getattr(obj, "__module__", "") or ""
        closure = getattr(obj, "__closure__", None)
        return mod in ("__main__", "builtins") or mod.startswith("course_lib") or bool(closure) or obj.__name__ == "<lambda>"
    if callable(obj) and not (_has_torch() and isinstance(obj, torch.Tensor)):
        mod = type(obj).__module__ or ""
        return not mod.startswith(("torch", "numpy", "functools"))
    return False


def _cache_kind(obj) -> bool:
    """Objects the student's process keeps one copy of, by identity (an optimizer keeps its state)."""
    mod = type(obj).__module__ or ""
    if "Tokenizer" in type(obj).__name__ or (mod.startswith(("transformers", "tokenizers")) and hasattr(obj, "batch_decode")):
        return True  # a tokenizer (transformers 5 calls its class TokenizersBackend)
    return _has_torch() and isinstance(obj, (torch.nn.Module, torch.optim.Optimizer))


def _fingerprint(obj):
    if _has_torch() and isinstance(obj, torch.nn.Module):
        return (obj.training,) + tuple((id(t), t._version, t.requires_grad) for t in obj.state_dict(keep_vars=True).values())
    return None


_MISSING = object()


class Outbound:
    """The sending half of :class:`remote.Student` (it needs ``request``, ``_handle`` and the tables)."""

    def _callback_id(self, obj) -> int:
        k = id(obj)
        i = self._cb_ids.get(k)
        if i is None or self.callbacks.get(i) is not obj:
            self._next_cb += 1
            i = self._next_cb
            self.callbacks[i] = obj
            self._cb_ids[k] = i
        if self._cb_collect is not None:
            self._cb_collect.append(i)
        return i

    def _pickler(self, buf, leaves: list | None, cached: bool, refs: bool = False, root=None):
        import cloudpickle

        student = self

        class _P(cloudpickle.CloudPickler):
            def persistent_id(self, obj):
                if isinstance(obj, Remote):
                    return ("h", obj._h)
                if not cached:  # an object sent by value, whole: its class's methods go with it
                    if refs and _has_torch() and isinstance(obj, torch.Tensor):  # an optimizer's parameters: the student's copies
                        ref = student._param_ref.get(id(obj))
                        if ref is not None and student._still_sent(ref[0]):
                            return ("param", ref[0], ref[1])
                    if obj is not root and _is_callback(obj):  # a hook or a stored function of the test's: it stays here
                        return ("cb", student._callback_id(obj), getattr(obj, "__name__", type(obj).__name__))
                    return None
                if _has_torch() and isinstance(obj, torch.Tensor):
                    ref = student._param_ref.get(id(obj))
                    if ref is not None and student._still_sent(ref[0]):
                        return ("param", ref[0], ref[1])
                    if leaves is not None and obj.requires_grad:
                        for i, t in enumerate(leaves):
                            if t[0] is obj:
                                return ("gin", i)
                        leaves.append((obj, obj.detach().clone().requires_grad_(True)))
                        return ("gin", len(leaves) - 1)
                    return None
                if _cache_kind(obj):
                    return ("obj", student._put(obj))
                if _is_callback(obj):
                    return ("cb", student._callback_id(obj), getattr(obj, "__name__", type(obj).__name__))
                return None

        return _P(buf, protocol=5)

    def _still_sent(self, key: str) -> bool:
        obj, fp = self._sent.get(int(key), (None, None))
        return obj is not None and _fingerprint(obj) == fp

    def _put(self, obj) -> str:
        key, fp = str(id(obj)), _fingerprint(obj)
        old = self._sent.get(id(obj))
        if old is not None and old[0] is obj and old[1] == fp:
            return key
        buf = io.BytesIO()
        refs = _has_torch() and isinstance(obj, torch.optim.Optimizer)
        outer, self._cb_collect = self._cb_collect, []
        try:
            self._pickler(buf, None, False, refs=refs, root=obj).dump(obj)  # the object itself, by value
        finally:  # the callbacks a kept object holds (a spy's counter) live as long as the object
            self._persist_cbs.update(self._cb_collect)
            self._cb_collect = outer
        self.request({"op": "put", "key": key}, [buf.getvalue()])
        self._sent[id(obj)] = (obj, fp)
        if isinstance(obj, torch.nn.Module):
            for name, t in obj.state_dict(keep_vars=True).items():
                self._param_ref[id(t)] = (key, name)
        return key

    def dumps(self, value, leaves: list | None = None) -> bytes:
        # a first pass sends the models (and tokenizers) the value holds, so that the tensors of a
        # model (an optimizer's parameters) refer to the student's copy of that same model
        self._pickler(io.BytesIO(), None, True).dump(value)
        buf = io.BytesIO()
        self._pickler(buf, leaves, True).dump(value)
        return buf.getvalue()

    def apply_sync(self, desc, bufs) -> None:
        """Copy back what the student's code changed in the checker's models (see ``agent.sync``)."""
        if not desc:
            return
        changes = wire.decode(desc, bufs, self._handle)
        for key, ch in changes.items():
            obj, _ = self._sent.get(int(key), (None, None))
            if not isinstance(obj, torch.nn.Module):
                continue
            tensors = obj.state_dict(keep_vars=True)
            self._remember(int(key), obj, tensors, ch)
            with torch.no_grad():
                for name, t in ch.get("tensors", {}).items():
                    if name in tensors and tuple(tensors[name].shape) == tuple(t.shape):
                        tensors[name].copy_(t.to(tensors[name].dtype))
            for name, g in ch.get("grads", {}).items():
                if name in tensors and tuple(tensors[name].shape) == tuple(g.shape):
                    tensors[name].grad = g.detach().to(tensors[name].dtype)
            mods = dict(obj.named_modules())
            for path, attrs in ch.get("attrs", {}).items():
                m = mods.get(path)
                if m is not None and type(m).__module__ == "__main__":
                    for a, v in attrs.items():
                        if not a.startswith("_"):
                            object.__setattr__(m, a, v)
            obj.train(bool(ch.get("training", obj.training)))
            self._sent[int(key)] = (obj, _fingerprint(obj))

    def _remember(self, key: int, obj, tensors: dict, ch: dict) -> None:
        """Before a change from the student's code lands in one of the checker's models, keep what it replaces:
        :meth:`restore_kept` puts it back when the test cell ends."""
        u = self._undo.setdefault(key, {"obj": obj, "tensors": {}, "grads": {}, "attrs": {}, "training": obj.training})
        for name in ch.get("tensors", {}):
            if name in tensors and name not in u["tensors"]:
                u["tensors"][name] = tensors[name].detach().clone()
        for name in ch.get("grads", {}):
            if name in tensors and name not in u["grads"]:
                u["grads"][name] = tensors[name].grad
        mods = dict(obj.named_modules())
        for path, attrs in ch.get("attrs", {}).items():
            for a in attrs:
                if path in mods and (path, a) not in u["attrs"]:
                    u["attrs"][(path, a)] = vars(mods[path]).get(a, _MISSING)

    def restore_kept(self) -> None:
        """The end of a test cell: the checker's models are as they were before the student's code changed them
        (a submission that zeroes the model it is handed cannot change what a later test computes with it).
        The student's process gets a fresh copy when a test next hands it one."""
        for key, u in self._undo.items():
            obj = u["obj"]
            tensors = obj.state_dict(keep_vars=True)
            with torch.no_grad():
                for name, old in u["tensors"].items():
                    tensors[name].copy_(old)
            for name, g in u["grads"].items():
                tensors[name].grad = g
            mods = dict(obj.named_modules())
            for (path, a), v in u["attrs"].items():
                if path in mods:
                    if v is _MISSING:
                        vars(mods[path]).pop(a, None)
                    else:
                        object.__setattr__(mods[path], a, v)
            obj.train(u["training"])
            self._sent.pop(key, None)
        self._undo.clear()

    def _plain_dumps(self, value, marks: dict | None = None) -> bytes:
        """A callback's result whose tensors carry the checker's graph: those travel as marks."""
        import cloudpickle

        student = self

        class _P(cloudpickle.CloudPickler):
            def persistent_id(self, obj):
                if isinstance(obj, Remote):
                    return ("h", obj._h)
                if marks and _has_torch() and isinstance(obj, torch.Tensor) and id(obj) in marks:
                    return ("gout", marks[id(obj)])
                if _is_callback(obj):
                    return ("cb", student._callback_id(obj), getattr(obj, "__name__", type(obj).__name__))
                return None

        buf = io.BytesIO()
        _P(buf, protocol=5).dump(value)
        return buf.getvalue()
