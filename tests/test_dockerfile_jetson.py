"""Invariants of Dockerfile.jetson (Docker cannot run here; hadolint is run by hand, see the
README).

Parsed, not grepped: continuation lines are joined, comments dropped, ARG defaults expanded, and the
pip-installed packages compared with the runtime dependencies that pyproject.toml declares and with
the pins of constraints/jetpack5.txt / jetpack6.txt, which tests/test_install_matrix.py resolves
against PyPI for the JetPack's Python and aarch64.
"""

import re
import shlex
from pathlib import Path

import pytest
from packaging.requirements import Requirement

try:
    import tomllib
except ImportError:  # pragma: no cover - Python < 3.11
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = re.compile(
    r"^(opencv[-_]python.*|opencv[-_]contrib[-_]python.*|torch.*|tensorrt.*|"
    r"onnxruntime[-_]gpu|ultralytics)$",
    re.IGNORECASE,
)


def instructions(text):
    """[(INSTRUCTION, arguments)] with continuations joined and comment lines removed."""
    out, buf = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or not line:
            continue
        buf += " " + line[:-1] if line.endswith("\\") else " " + line
        if not line.endswith("\\"):
            word, _, rest = buf.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def expand(text, args):
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), text)


def dist_name(requirement):
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def pip_packages(steps, args):
    """The package arguments of every `pip install` in a RUN step, as [[token]] per command."""
    commands = []
    for word, rest in steps:
        if word == "RUN":
            for command in expand(rest, args).split("&&"):
                tokens = shlex.split(command)
                if "pip" in " ".join(tokens[:3]) and "install" in tokens:
                    commands.append(tokens[tokens.index("install") + 1 :])
    return commands


def pins(path):
    """{name: version} of a constraints file's `name==version` lines."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[dist_name(name)] = version.strip()
    return out


def docker_builds(lines):
    """[(L4T tag, {build arg: value})] of the `docker build` commands among ``lines``."""
    builds, buf = [], ""
    for line in lines:
        buf += " " + line.strip().rstrip("\\")
        if line.strip().endswith("\\"):
            continue
        if buf.strip().startswith("docker build"):
            tokens = shlex.split(buf)
            overrides = dict(
                tokens[i + 1].split("=", 1) for i, t in enumerate(tokens) if t == "--build-arg"
            )
            builds.append((overrides.get("L4T_TAG"), overrides))
        buf = ""
    return builds


def documented_builds():
    """The builds the Dockerfile's header comment and the README show."""
    header = []
    for line in (ROOT / "Dockerfile.jetson").read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line.lstrip("#"))
    readme = (ROOT / "README.md").read_text().splitlines()
    return [("Dockerfile", b) for b in docker_builds(header)] + [
        ("README", b) for b in docker_builds(readme)
    ]


@pytest.fixture(scope="module")
def parsed():
    steps = instructions((ROOT / "Dockerfile.jetson").read_text())
    args = {}
    for word, rest in steps:
        if word == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args[key] = value
    return steps, args


def test_base_image_is_a_pinned_l4t_tag_from_a_build_arg(parsed):
    steps, args = parsed
    first_from = next(i for i, (w, _) in enumerate(steps) if w == "FROM")
    before = [rest.split("=")[0] for w, rest in steps[:first_from] if w == "ARG"]
    assert "L4T_TAG" in before
    assert "${L4T_TAG}" in steps[first_from][1]
    assert re.fullmatch(r"r3[56]\.\d+\.\d+", args["L4T_TAG"])
    assert expand(steps[first_from][1], args).startswith("nvcr.io/nvidia/l4t-")


def test_pip_installs_only_runtime_packages_without_deps(parsed):
    steps, args = parsed
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    allowed = {dist_name(r) for r in pyproject["project"]["dependencies"]}
    allowed |= {dist_name(r) for r in extras["jetson"] + extras["pycuda"]}  # the CUDA bindings
    pip_commands = pip_packages(steps, args)
    assert pip_commands, "the image must install our package with pip"
    for tokens in pip_commands:
        assert "--no-deps" in tokens
        packages = [t for t in tokens if not t.startswith("-") and not t.startswith("/")]
        for package in packages:
            assert not FORBIDDEN.match(dist_name(package)), package
            assert dist_name(package) in allowed, package
        assert "/src" in tokens


def test_header_and_readme_document_a_build_for_each_jetpack(parsed):
    for where in ("Dockerfile", "README"):
        tags = [tag for w, (tag, _) in documented_builds() if w == where]
        assert any(t.startswith("r35.") for t in tags), (where, tags)
        assert any(t.startswith("r36.") for t in tags), (where, tags)


@pytest.mark.parametrize("build", documented_builds(), ids=lambda b: f"{b[0]}-{b[1][0]}")
def test_pip_pins_match_the_jetpack_constraints(parsed, build):
    """Every package the image pip-installs, with the documented build arguments of that JetPack,
    is pinned in its constraints file: equal to an exact pin, or a range that admits the pin."""
    steps, defaults = parsed
    _, (tag, overrides) = build
    jetpack = {"r35": "jetpack5", "r36": "jetpack6"}[tag.split(".")[0]]
    constraints = pins(ROOT / "constraints" / f"{jetpack}.txt")
    packages = [
        t
        for tokens in pip_packages(steps, dict(defaults, **overrides))
        for t in tokens
        if not t.startswith(("-", "/"))
    ]
    assert packages
    for package in packages:
        req = Requirement(package)
        name = dist_name(req.name)
        assert name in constraints, f"{package} is not pinned in constraints/{jetpack}.txt"
        exact = [s.version for s in req.specifier if s.operator == "=="]
        if exact:
            assert exact == [constraints[name]], (package, f"{jetpack}.txt", constraints[name])
        else:
            assert req.specifier.contains(constraints[name]), (package, constraints[name])
    if jetpack == "jetpack5":  # JetPack 5's TensorRT 8.5 calls np.bool, removed in NumPy 1.24
        numpy = [Requirement(p) for p in packages if dist_name(p) == "numpy"]
        assert numpy and all(not r.specifier.contains("1.24.0") for r in numpy), packages


def test_sources_copied_cover_every_package_folder(parsed):
    steps, _ = parsed
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    copied = {Path(rest.split()[0]).parts[0] for w, rest in steps if w == "COPY"}
    folders = {Path(p).parts[0] for p in pyproject["tool"]["setuptools"]["package-dir"].values()}
    assert folders <= copied
    assert "pyproject.toml" in " ".join(rest for w, rest in steps if w == "COPY")


def test_engine_cache_on_a_volume_and_glimmer_run_by_default(parsed):
    steps, _ = parsed
    env = " ".join(rest for w, rest in steps if w == "ENV")
    cache = re.search(r"GLIMMER_ENGINE_CACHE=(\S+)", env).group(1)
    volumes = [
        v.strip('"') for w, rest in steps if w == "VOLUME" for v in rest.strip("[]").split(",")
    ]
    assert any(cache == v or cache.startswith(v.rstrip("/") + "/") for v in volumes), (
        cache,
        volumes,
    )
    entry = [rest for w, rest in steps if w in ("ENTRYPOINT", "CMD")]
    assert entry and "glimmer-run" in entry[0]


def test_docs_show_the_build_and_run_commands(parsed):
    _, args = parsed
    doc = (ROOT / "README.md").read_text()
    assert re.search(r"docker build -f Dockerfile\.jetson[^\n]*--build-arg L4T_TAG=r3[56]", doc)
    run = re.search(r"docker run[^`]*", doc).group(0)
    for option in (
        "--runtime nvidia",
        "-v /tmp/argus_socket:/tmp/argus_socket",
        "--device /dev/video0",
        ":/data",
    ):
        assert option in run, option
