"""The type stubs (``weightlift/__init__.pyi``) say what the package has:
every public name, and for every function and method the parameters
(names, kinds and defaults) it takes at run time."""

import ast
import inspect
from pathlib import Path

import pytest

import weightlift

STUB = Path(weightlift.__file__).with_name("__init__.pyi")


def _stub():
    """Top-level names of the stub (type aliases apart), and its functions
    and methods by qualified name."""
    tree = ast.parse(STUB.read_text())
    names, functions, classes = set(), {}, {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            names.add(node.name)
            functions[node.name] = node
        elif isinstance(node, ast.ClassDef):
            names.add(node.name)
            classes[node.name] = node
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    functions[f"{node.name}.{item.name}"] = item
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    # `X = Union[...]` and the like are aliases for annotations, not names
    # of the package.
    return names, functions, classes


NAMES, FUNCTIONS, CLASSES = _stub()

_KINDS = {
    "posonlyargs": inspect.Parameter.POSITIONAL_ONLY,
    "args": inspect.Parameter.POSITIONAL_OR_KEYWORD,
    "kwonlyargs": inspect.Parameter.KEYWORD_ONLY,
}


def _stub_params(fn: ast.FunctionDef):
    """(name, kind, default) of each parameter; the default is the literal,
    or the ``inspect.Parameter.empty`` marker."""
    a = fn.args
    out = []
    positional = a.posonlyargs + a.args
    defaults = [inspect.Parameter.empty] * (len(positional) - len(a.defaults)) + list(a.defaults)
    for arg, default in zip(positional, defaults):
        kind = _KINDS["posonlyargs" if arg in a.posonlyargs else "args"]
        out.append((arg.arg, kind, default))
    if a.vararg:
        out.append((a.vararg.arg, inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.empty))
    for arg, default in zip(a.kwonlyargs, a.kw_defaults):
        out.append((arg.arg, _KINDS["kwonlyargs"], inspect.Parameter.empty if default is None else default))
    if a.kwarg:
        out.append((a.kwarg.arg, inspect.Parameter.VAR_KEYWORD, inspect.Parameter.empty))
    return [
        (n, k, d if d is inspect.Parameter.empty else ast.literal_eval(d))
        for n, k, d in out
    ]


def _runtime(qualified: str):
    obj = weightlift
    for part in qualified.split("."):
        obj = getattr(obj, part)
    return obj


def test_every_public_name_is_in_the_stub():
    missing = sorted(set(weightlift.__all__) - NAMES)
    assert not missing, f"in weightlift.__all__ but not in {STUB.name}: {missing}"
    extra = sorted(n for n in NAMES if n not in weightlift.__all__ and not hasattr(weightlift, n))
    assert not extra, f"in {STUB.name} but not in the package: {extra}"


@pytest.mark.parametrize("qualified", sorted(FUNCTIONS))
def test_stubbed_signatures_match_the_runtime(qualified):
    fn = FUNCTIONS[qualified]
    if any(isinstance(d, ast.Name) and d.id == "property" for d in fn.decorator_list):
        cls, attr = qualified.split(".")
        assert isinstance(inspect.getattr_static(_runtime(cls), attr), property), qualified
        return
    runtime = _runtime(qualified)
    got = [(p.name, p.kind, p.default) for p in inspect.signature(runtime).parameters.values()]
    want = _stub_params(fn)
    if "." in qualified and got and want and want[0][0] == "self" and got[0][0] != "self":
        want = want[1:]  # a bound form
    assert got == want, f"{qualified}: at run time {got}, in the stub {want}"


@pytest.mark.parametrize("cls", ["SafeOpen", "TensorSlice"])
def test_every_public_method_is_stubbed(cls):
    runtime = _runtime(cls)
    wanted = {
        name
        for name, value in vars(runtime).items()
        if callable(value) or isinstance(value, property)
        if not name.startswith("_") or name in ("__init__", "__len__", "__getitem__", "__enter__", "__exit__")
    }
    stubbed = {q.split(".", 1)[1] for q in FUNCTIONS if q.startswith(f"{cls}.")}
    missing = sorted(wanted - stubbed)
    assert not missing, f"{cls}: not in the stub: {missing}"
