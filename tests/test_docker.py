"""The Dockerfile, checked as far as a machine without a docker daemon allows (issue 20 item
12): its torch is the one the project pins and tests, the vision extra cannot replace it, every
file it copies exists in the build context, and the command its header documents finds its
recipe inside the image."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path, PurePosixPath

from conftest import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
        if not line.endswith("\\"):
            word, _, rest = pending.partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    return out


DOCKERFILE = (ROOT / "Dockerfile").read_text()
STEPS = instructions(DOCKERFILE)


def test_the_image_has_the_torch_the_project_pins_and_tests():
    pin = re.search(r"^TORCH_SPEC \?= torch==([\d.]+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    args = dict(a.split("=", 1) for kind, a in STEPS if kind == "ARG" and "=" in a)
    assert args["TORCH_VERSION"] == pin
    (install,) = [a for kind, a in STEPS if kind == "RUN" and "torch==" in a]
    pip = next(part for part in install.split("&&") if "torch==" in part)
    words = shlex.split(pip)
    # torch, its own torchvision build and the vision extra in one resolver call: pip keeps the pin
    assert words[:2] == ["pip", "install"]
    assert "torch==${TORCH_VERSION}" in words and "torchvision==${TORCHVISION_VERSION}" in words and ".[vision,streaming]" in words
    # LitData: the version make bootstrap installs, without its declared requirements
    litdata = re.search(r"^LITDATA_SPEC \?= litdata==([\d.]+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert args["LITDATA_VERSION"] == litdata
    (no_deps,) = [part for part in install.split("&&") if "litdata==" in part]
    assert shlex.split(no_deps) == ["pip", "install", "--no-deps", "litdata==${LITDATA_VERSION}"]
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["vision"]
    assert any(e.startswith("torchvision") for e in extras), "the pinned torchvision is the extra's package"
    # a Python that the package accepts
    base = next(a for kind, a in STEPS if kind == "FROM")
    version = re.match(r"python:(3\.\d+)", base).group(1)
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert tuple(map(int, version.split("."))) >= tuple(map(int, requires.removeprefix(">=").split(".")))


def image_files() -> dict[PurePosixPath, Path]:
    """Where each COPY puts its source in the image, relative WORKDIRs resolved."""
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    workdir, placed = PurePosixPath("/"), {}
    for kind, args in STEPS:
        if kind == "WORKDIR":
            workdir = workdir / args
        elif kind == "COPY":
            *sources, dest = shlex.split(args)
            for src in sources:
                path = ROOT / src
                assert path.exists(), f"COPY {src}: not in the build context"
                assert not any(Path(src).match(pattern) or src == pattern for pattern in ignored), f"{src} is dockerignored"
                target = workdir / dest if not dest.endswith("/") or len(sources) == 1 else workdir / dest / src
                for link in (p for p in path.rglob("*") if p.is_symlink()) if path.is_dir() else []:
                    # COPY keeps symlinks as they are: one that leaves the copied folder breaks
                    assert path.resolve() in link.resolve().parents, f"{link} leaves {src} in the image"
                placed[target] = path
    return placed


def test_the_documented_command_finds_its_recipe_inside_the_image():
    documented = re.search(r"^#\s+docker run (.+)$", DOCKERFILE, re.M).group(1)
    words = shlex.split(documented)
    entry = next(a for kind, a in STEPS if kind == "ENTRYPOINT")
    assert entry == '["trainkit"]'
    assert "trainkit" in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    image, *command = words[words.index("trainkit"):] if "trainkit" in words else words
    assert command[0] == "fit", command
    recipe = PurePosixPath(command[command.index("--config") + 1])
    workdir = PurePosixPath("/")
    for kind, args in STEPS:
        if kind == "WORKDIR":
            workdir = workdir / args
    wanted = workdir / recipe
    placed = image_files()
    found = [src / wanted.relative_to(dest) for dest, src in placed.items() if dest in wanted.parents or dest == wanted]
    assert found and found[0].is_file(), f"{wanted} is not in the image (copied: {sorted(map(str, placed))})"
    # and runs land in a directory the documented command mounts from the host
    mounts = [words[i + 1].split(":")[1] for i, w in enumerate(words) if w == "-v"]
    assert str(workdir / "runs") in mounts
