"""Every TensorRT name our code uses exists in TensorRT's real Python API (the 10.13 stubs), or is
listed below with the versions that have it and the feature test (``hasattr``) that guards it.

The fake tensorrt module has only what we put in it, so a typo, or a name TensorRT removed, passes
every fake test. This test reads our TensorRT code with ``ast`` and looks each name up in
``tensorrt_bindings/tensorrt.pyi`` from the stubs wheel in .venv/stubs (read from the zip, parsed
with ``ast``, never installed: its ``tensorrt/`` folder would import as an empty package). The 10.13
stubs describe 10.13 only: a name they have may still be missing from 8.x or 11.x, which is what
the fake generations and their tests cover.

How TensorRT objects are recognised: ``trt.<name>`` chains; variables named as in
:data:`RECEIVERS` (our code names TensorRT objects consistently; a parameter annotated with another
type, or a name assigned a non-TensorRT value, is not one); and what a stub method or property
returns (``network.get_input(i)`` is an ``ITensor``). ``getattr`` / ``hasattr`` with a literal name
count as uses.
"""

import ast
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import pytest
from fake_tensorrt import tensorrt_stubs_wheel

ROOT = Path(__file__).resolve().parents[3]
SOURCES = sorted((ROOT / "runtime" / "backends" / "trt").glob("*.py")) + [
    ROOT / "calibration" / "trt_calibrator.py"
]
MODULE = "<module tensorrt>"

#: variable names that hold TensorRT objects in our code, and the stub class of each
RECEIVERS = {
    "trt": MODULE,
    "builder": "Builder",
    "config": "IBuilderConfig",
    "network": "INetworkDefinition",
    "parser": "OnnxParser",
    "runtime": "Runtime",
    "engine": "ICudaEngine",
    "context": "IExecutionContext",
    "layer": "ILayer",
    "tensor": "ITensor",
    "profile": "IOptimizationProfile",
    "calibration": "IOptimizationProfile",
    "cache": "ITimingCache",
    "self.context": "IExecutionContext",
    "self._engine": "ICudaEngine",
    "self._context": "IExecutionContext",
}

#: names TensorRT has but our code must not use, and why
FORBIDDEN = {
    (MODULE, "nptype"): "raises AttributeError with numpy 1.24-1.26 on 8.4 / 8.5.2 (np.bool); "
    "use compat.numpy_dtype",
}

#: public methods of our IInt8EntropyCalibrator2 subclass that TensorRT does not call
OUR_CALIBRATOR_METHODS = {"close", "expect_batch"}


@dataclass(frozen=True)
class Gate:
    """A name 10.13 lacks: which versions have it, where we use it, and what guards that use."""

    versions: str
    used_in: str  # qualified name (prefix) of the code that uses it
    decided_in: str  # the function whose source holds the feature test
    test: str  # the feature test, verbatim: hasattr(...) or a call to a function returning one


_BINDINGS = Gate("8.x (removed in 10.0)", "io_tensors", "io_tensors", "uses_tensor_names(engine)")
_BINDINGS_EXEC = Gate(
    "8.x (removed in 10.0)", "BindingsExecution", "make_execution", "uses_tensor_names(engine)"
)
#: names TensorRT 10.13 does not have, used only behind a feature test
VERSION_GATED: Dict[Tuple[str, str], Gate] = {
    ("IBuilderConfig", "max_workspace_size"): Gate(
        "before 8.4 (deprecated in 8.4, removed in 10.0)",
        "set_workspace",
        "set_workspace",
        'hasattr(config, "set_memory_pool_limit")',
    ),
    ("ICudaEngine", "num_bindings"): _BINDINGS,
    ("ICudaEngine", "binding_is_input"): _BINDINGS,
    ("ICudaEngine", "get_binding_shape"): _BINDINGS,
    ("ICudaEngine", "get_binding_name"): _BINDINGS,
    ("ICudaEngine", "get_binding_dtype"): _BINDINGS,
    ("ICudaEngine", "get_profile_shape"): _BINDINGS,
    ("IExecutionContext", "set_binding_shape"): _BINDINGS_EXEC,
    ("IExecutionContext", "get_binding_shape"): _BINDINGS_EXEC,
    ("IExecutionContext", "execute_async_v2"): _BINDINGS_EXEC,
}


# -- the stubs ------------------------------------------------------------------------------------


@dataclass
class Stubs:
    names: Set[str]  # module level: classes, functions, constants
    members: Dict[str, Set[str]]  # class -> its members, inherited ones included
    returns: Dict[Tuple[str, str], str]  # (class, method or property) -> stub class it returns


def _annotation_class(node: Optional[ast.expr]) -> Optional[str]:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def parse_stubs(text: str) -> Stubs:
    # Some generated signatures are not valid Python (a parameter without a default after one
    # with a default): keep the names and return annotations, drop the parameter lists.
    text = re.sub(
        r"^(\s*def \w+)\(.*\)(\s*->\s*.+?)?:\s*$", r"\1(*args, **kwargs)\2:", text, flags=re.M
    )
    tree = ast.parse(text)
    names: Set[str] = set()
    own: Dict[str, Set[str]] = {}
    bases: Dict[str, List[str]] = {}
    returns: Dict[Tuple[str, str], str] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        if not isinstance(node, ast.ClassDef):
            continue
        bases[node.name] = [b.id for b in node.bases if isinstance(b, ast.Name)]
        members = own.setdefault(node.name, set())
        for item in node.body:
            if isinstance(item, ast.FunctionDef):
                members.add(item.name)
                returned = _annotation_class(item.returns)
                if returned:
                    returns[(node.name, item.name)] = returned
            elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                members.add(item.target.id)
            elif isinstance(item, ast.Assign):
                members.update(t.id for t in item.targets if isinstance(t, ast.Name))

    def inherited(cls: str) -> Set[str]:
        found = set(own.get(cls, ()))
        for base in bases.get(cls, ()):
            found |= inherited(base)
        return found

    return Stubs(names, {cls: inherited(cls) for cls in own}, returns)


@pytest.fixture(scope="module")
def stubs() -> Stubs:
    wheel = tensorrt_stubs_wheel()
    if wheel is None:
        pytest.skip(
            "TensorRT's API stubs are absent (expected .venv/stubs/tensorrt_stubs-*.whl): "
            "nothing to check our TensorRT names against"
        )
    with zipfile.ZipFile(wheel) as z:
        return parse_stubs(z.read("tensorrt_bindings/tensorrt.pyi").decode("utf-8"))


# -- our code -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Use:
    owner: str  # MODULE or a stub class
    name: str
    where: str  # file:line
    qualname: str  # enclosing class / function path


class Collector:
    """Finds the TensorRT names a file uses, function by function, with a little type flow."""

    def __init__(self, path: Path, stubs: Stubs) -> None:
        self.path, self.stubs = path, stubs
        self.uses: List[Use] = []
        self.subclasses: List[Tuple[str, ast.ClassDef, str]] = []  # (stub base, class, qualname)
        self.functions: Dict[str, ast.FunctionDef] = {}
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        self._scope(tree.body, {}, "")

    # Types: MODULE, a stub class name, or None (not TensorRT).
    def typeof(self, node: ast.expr, env: Dict[str, str]) -> Optional[str]:
        if isinstance(node, ast.Name):
            return env.get(node.id)
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self":
                return env.get(f"self.{node.attr}")
            owner = self.typeof(node.value, env)
            if owner == MODULE:
                return node.attr if node.attr in self.stubs.members else None
            return self.stubs.returns.get((owner, node.attr)) if owner else None
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute):
                owner = self.typeof(func.value, env)
                if owner == MODULE:
                    return func.attr if func.attr in self.stubs.members else None  # a constructor
                return self.stubs.returns.get((owner, func.attr)) if owner else None
            literal = self._literal_lookup(node)
            if literal is not None and isinstance(func, ast.Name) and func.id == "getattr":
                owner = self.typeof(node.args[0], env)
                if owner == MODULE and literal in self.stubs.members:
                    return literal
        return None

    @staticmethod
    def _literal_lookup(call: ast.Call) -> Optional[str]:
        """The name in ``getattr(x, "name"...)`` / ``hasattr(x, "name")``."""
        func = call.func
        if (
            isinstance(func, ast.Name)
            and func.id in ("getattr", "hasattr")
            and len(call.args) >= 2
            and isinstance(call.args[1], ast.Constant)
            and isinstance(call.args[1].value, str)
        ):
            return call.args[1].value
        return None

    @staticmethod
    def _target_key(target: ast.expr) -> Optional[str]:
        if isinstance(target, ast.Name):
            return target.id
        if (
            isinstance(target, ast.Attribute)
            and isinstance(target.value, ast.Name)
            and target.value.id == "self"
        ):
            return f"self.{target.attr}"
        return None

    def _scope(self, body: List[ast.stmt], env: Dict[str, str], qualname: str) -> None:
        nodes: List[Tuple[Tuple[int, int, int], ast.AST]] = []
        nested: List[ast.stmt] = []
        stack: List[ast.AST] = list(body)
        while stack:
            node = stack.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                nested.append(node)
                continue
            if isinstance(node, (ast.Assign, ast.AnnAssign)):  # applied after its value is read
                nodes.append(((node.end_lineno or 0, node.end_col_offset or 0, 1), node))
            elif hasattr(node, "lineno"):
                nodes.append(((node.lineno, node.col_offset, 0), node))
            stack.extend(ast.iter_child_nodes(node))
        for _, node in sorted(nodes, key=lambda item: item[0]):
            self._visit(node, env, qualname)
        for node in nested:
            name = f"{qualname}.{node.name}" if qualname else node.name
            if isinstance(node, ast.ClassDef):
                for base in node.bases:
                    owner = self.typeof(base, env)
                    if owner and owner != MODULE:
                        self.subclasses.append((owner, node, name))
                self._scope(node.body, dict(env), name)
            else:
                self.functions[node.name] = node
                self._scope(node.body, self._function_env(node, env), name)

    @staticmethod
    def _function_env(func: ast.FunctionDef, outer: Dict[str, str]) -> Dict[str, str]:
        env = dict(outer)
        env.update({k: v for k, v in RECEIVERS.items() if not k.startswith("self.")})
        env.update({k: v for k, v in RECEIVERS.items() if k.startswith("self.")})
        for arg in func.args.args + func.args.kwonlyargs:
            annotation = arg.annotation
            if annotation is not None and not (
                isinstance(annotation, ast.Name) and annotation.id == "Any"
            ):
                env.pop(arg.arg, None)  # annotated with a non-TensorRT type
        return env

    def _visit(self, node: ast.AST, env: Dict[str, str], qualname: str) -> None:
        where = f"{self.path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Attribute):
            owner = self.typeof(node.value, env)
            if owner:
                self.uses.append(Use(owner, node.attr, where, qualname))
        elif isinstance(node, ast.Call):
            literal = self._literal_lookup(node)
            owner = self.typeof(node.args[0], env) if literal is not None else None
            if owner:
                self.uses.append(Use(owner, literal, where, qualname))
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            value = node.value
            kind = self.typeof(value, env) if value is not None else None
            for target in targets:
                key = self._target_key(target)
                if key is None:
                    continue
                if kind:
                    env[key] = kind
                elif not isinstance(value, (ast.Call, ast.Name, ast.Attribute, ast.Subscript)):
                    env.pop(key, None)  # a path, a number, a string: not a TensorRT object


@pytest.fixture(scope="module")
def collected(stubs) -> List[Collector]:
    return [Collector(path, stubs) for path in SOURCES]


def _exists(stubs: Stubs, use: Use) -> bool:
    if use.name.startswith("__") and use.name.endswith("__"):
        return True  # __version__, __init__: Python's, not TensorRT's API
    if use.owner == MODULE:
        return use.name in stubs.names
    return use.name in stubs.members.get(use.owner, set())


def test_receivers_name_real_tensorrt_classes(stubs):
    assert {v for v in RECEIVERS.values() if v != MODULE} <= set(stubs.members)


def test_the_collector_sees_our_tensorrt_code(collected):
    """Guards the test itself: an analysis that found nothing would pass vacuously."""
    found = {(u.owner, u.name) for c in collected for u in c.uses}
    for expected in (
        (MODULE, "Builder"),
        (MODULE, "OnnxParser"),
        ("BuilderFlag", "FP16"),
        ("Builder", "platform_has_fast_fp16"),
        ("IBuilderConfig", "set_timing_cache"),
        ("ITensor", "dtype"),  # through network.get_input(i) / layer.get_output(j)
        ("ITimingCache", "serialize"),
        ("ICudaEngine", "num_io_tensors"),
        ("IExecutionContext", "execute_async_v3"),
        ("IExecutionContext", "execute_async_v2"),
        ("IOptimizationProfile", "set_shape"),
    ):
        assert expected in found, f"{expected} not collected"
    assert len(found) >= 50
    assert any(base == "IInt8EntropyCalibrator2" for c in collected for base, _, _ in c.subclasses)


def test_every_tensorrt_name_exists_in_10_13_or_is_version_gated(stubs, collected):
    wrong = []
    for use in (u for c in collected for u in c.uses):
        if (use.owner, use.name) in FORBIDDEN:
            wrong.append(f"{use.where}: {use.name} {FORBIDDEN[(use.owner, use.name)]}")
            continue
        if _exists(stubs, use):
            continue
        gate = VERSION_GATED.get((use.owner, use.name))
        label = "trt" if use.owner == MODULE else use.owner
        if gate is None:
            wrong.append(
                f"{use.where}: {label}.{use.name} is not in TensorRT 10.13's API (a typo, or a "
                "name only another version has: then add it to VERSION_GATED with the hasattr "
                "that guards it)"
            )
        elif not use.qualname.startswith(gate.used_in):
            wrong.append(
                f"{use.where}: {label}.{use.name} ({gate.versions}) is used in {use.qualname}, "
                f"outside {gate.used_in}, which its feature test guards"
            )
    assert not wrong, "\n".join(wrong)


def _feature_test(collected: List[Collector], gate: Gate) -> Tuple[str, str]:
    """(receiver variable, attribute) that ``gate.test`` checks with hasattr, following one call
    to a helper like ``uses_tensor_names(engine)``."""
    functions = {name: f for c in collected for name, f in c.functions.items()}
    source = ast.unparse(functions[gate.decided_in])
    assert gate.test.replace('"', "'") in source.replace('"', "'"), (
        f"{gate.decided_in} no longer contains the feature test {gate.test}"
    )
    call = ast.parse(gate.test, mode="eval").body
    assert isinstance(call, ast.Call) and isinstance(call.func, ast.Name)
    if call.func.id != "hasattr":
        helper = functions[call.func.id]
        (returned,) = [n for n in ast.walk(helper) if isinstance(n, ast.Return)]
        call = returned.value
        assert isinstance(call, ast.Call) and getattr(call.func, "id", None) == "hasattr", (
            f"{helper.name} must be a hasattr feature test"
        )
    receiver, name = call.args
    return ast.unparse(receiver), name.value


@pytest.mark.skipif(
    sys.version_info < (3, 9),
    reason="reads our source with ast.unparse (3.9+); the main suite runs it",
)
def test_version_gated_names_are_guarded_by_a_10_13_feature(stubs, collected):
    """Each gate tests (hasattr) a name 10.13 has, and each listed name is still used."""
    used = {(u.owner, u.name) for c in collected for u in c.uses}
    for (owner, name), gate in VERSION_GATED.items():
        assert (owner, name) in used, f"{owner}.{name} is no longer used: remove it from the list"
        assert name not in stubs.members[owner], f"{owner}.{name} is in 10.13: not version-gated"
        receiver, feature = _feature_test(collected, gate)
        assert feature in stubs.members[RECEIVERS[receiver]], (
            f"{gate.test} tests {feature}, which TensorRT 10.13 lacks"
        )


def test_calibrator_overrides_only_what_tensorrt_calls(stubs, collected):
    """A misspelt get_batch would never be called by TensorRT (and never fail a fake test)."""
    checked = 0
    for base, cls, qualname in (s for c in collected for s in c.subclasses):
        for item in cls.body:
            if isinstance(item, ast.FunctionDef) and not item.name.startswith("_"):
                checked += 1
                assert item.name in stubs.members[base] | OUR_CALIBRATOR_METHODS, (
                    f"{qualname}.{item.name} is neither a {base} method nor listed as ours"
                )
    assert checked >= 4
