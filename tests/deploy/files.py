"""The deploy files as data, for the tests that keep them correct without a Docker engine or a
cluster: the Dockerfile's instructions, .dockerignore, YAML documents, the tools' paths."""

from __future__ import annotations

import fnmatch
import json
import shlex
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"


def tool(name: str) -> str | None:
    """A tool installed by pip into this interpreter's environment, else on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which(name)


@dataclass
class Instruction:
    keyword: str  # upper case
    args: str  # the rest, continuation lines joined
    stage: str

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form ENTRYPOINT / CMD, else None."""
        text = self.args.strip()
        return json.loads(text) if text.startswith("[") else None


def dockerfile(path: Path = REPO / "Dockerfile") -> list[Instruction]:
    instructions, stage, pending = [], "", ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        pending = ""
        keyword = keyword.upper()
        if keyword == "FROM":
            parts = args.split()
            stage = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else parts[0]
        instructions.append(Instruction(keyword, args.strip(), stage))
    return instructions


def env_of(instructions: list[Instruction], stage: str) -> dict[str, str]:
    """ENV key=value pairs of a stage (and of the stages it is built FROM)."""
    stages = {i.stage: i.args.split()[0] for i in instructions if i.keyword == "FROM"}
    chain, name = [], stage
    while name in stages:
        chain.insert(0, name)
        name = stages[name]
    env = {}
    for i in instructions:
        if i.keyword == "ENV" and i.stage in chain:
            for pair in shlex.split(i.args):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def copies(instructions: list[Instruction]) -> list[tuple[list[str], str, str | None]]:
    """(sources, destination, --from stage or None) of every COPY."""
    found = []
    for i in instructions:
        if i.keyword != "COPY":
            continue
        words = i.args.split()
        flags = [w for w in words if w.startswith("--")]
        paths = [w for w in words if not w.startswith("--")]
        source_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")),
                            None)
        found.append((paths[:-1], paths[-1], source_stage))
    return found


def dockerignore_includes(path: str, ignore_file: Path = REPO / ".dockerignore") -> bool:
    """Whether `path` (relative) is in the build context: the last matching pattern decides, a
    pattern matching a folder covers everything in it (Docker's rules, simplified)."""
    patterns = [line.strip() for line in ignore_file.read_text().splitlines()
                if line.strip() and not line.strip().startswith("#")]
    parts = Path(path).parts
    candidates = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    included = True
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if pattern.startswith("**/"):
            hit = any(fnmatch.fnmatch(Path(c).name, pattern[3:]) for c in candidates)
        else:
            hit = any(fnmatch.fnmatch(c, pattern) and c.count("/") == pattern.count("/")
                      for c in candidates)
        if hit:
            included = negated
    return included


def yaml_documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]
