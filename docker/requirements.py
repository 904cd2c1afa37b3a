"""Print the image's requirements from pyproject.toml, so the images install exactly the package's pins.

  python docker/requirements.py            core dependencies (the CPU image)
  python docker/requirements.py --gpu      the same, minus torch and faiss-cpu (the GPU image installs
                                           CUDA torch and faiss-gpu-cu12 first, pinned in gpu.Dockerfile)
  python docker/requirements.py --extra X  add an optional-dependency group (e.g. dev)
Standard library only: it runs in the image's build stage before anything is installed.
"""
from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

GPU_REPLACED = ("torch", "faiss-cpu")


def requirements(pyproject: Path, gpu: bool = False, extras: tuple[str, ...] = ()) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    if gpu:
        reqs = [r for r in reqs if re.split(r"[\s\[=<>!~;]", r, maxsplit=1)[0].lower() not in GPU_REPLACED]
    return reqs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--pyproject", default=str(Path(__file__).resolve().parents[1] / "pyproject.toml"))
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--extra", action="append", default=[])
    args = p.parse_args(argv)
    print("\n".join(requirements(Path(args.pyproject), args.gpu, tuple(args.extra))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
