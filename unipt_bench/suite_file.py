"""Suite TOML -> validated dataclasses -> expanded RunSpecs. Unknown keys are errors that name file and line.

A suite lists configurations (towers, task, batch); each configuration lists the methods to run on it,
as names or as tables with per-method settings:

    methods = ["partial", "unipt", { method = "bitfit", gpus = 8 }, { method = "unipt", label = "unipt-r4", reduction = 4 }]
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path
from typing import Any

from .attention import KERNELS
from .config import DdpSpec, RunSpec, Suite, TowerSpec, TrainSpec, name_problem
from .errors import UserError
from .memory_options import CHOICES as MEMORY_CHOICES
from .memory_options import check as check_memory_options

SUITE_KEYS = {"name", "description", "task", "task_options", "steps", "seed", "attention", "configs", "trackers",
              *MEMORY_CHOICES}
CONFIG_KEYS = {
    "name", "title", "paper", "task", "task_options", "batch", "gpus", "accumulate", "steps", "attention", "towers",
    "methods", "train", "ddp", *MEMORY_CHOICES,
}
TOWER_KEYS = {"name", "backbone", "tuned", "weights", "pooling"}
RUN_KEYS = {"method", "label", "gpus"}  # the rest of a method table are the method's options
MAX_SEED = 2**32 - 1  # numpy's bound; a training run's batch order seeds torch with seed x 100,003 + epoch


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file's table; any way it cannot be read (missing, not UTF-8, malformed, nested past what the
    parser can take) is one UserError naming the file."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start}); TOML files must be UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: malformed TOML: {exc}") from None
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to read") from None


def suites_dir() -> Path:
    """The built-in suites: installed as unipt_bench/suites, or the checkout's top-level suites/ (editable)."""
    package = Path(__file__).resolve().parent
    for folder in (package / "suites", package.parent / "suites"):
        if folder.is_dir():
            return folder
    raise UserError("the built-in suites folder is missing from this installation")


def suite_description_of(path: Path) -> str:
    """A suite file's one-line description ("" when it has none or cannot be read)."""
    try:
        return str(read_toml(path).get("description", "")).splitlines()[0]
    except (UserError, IndexError):
        return ""


def builtin_suites() -> dict[str, Path]:
    return {p.stem: p for p in sorted(suites_dir().glob("*.toml"))}


def resolve_suite(name_or_path: str) -> Path:
    """A built-in suite name, or a path to a TOML file."""
    suites = builtin_suites()
    if name_or_path in suites:
        return suites[name_or_path]
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise UserError(f"suite file not found: {path}")
        return path
    raise UserError(f"unknown suite {name_or_path!r}; built-in suites: {', '.join(sorted(suites))}")


class SuiteReader:
    """Validates one suite file; every error names the file and, where found, the line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = read_toml(path)
        self.text = path.read_text(encoding="utf-8")
        self.region: str | None = None  # the config being read: line search starts at its name

    def fail(self, message: str, near: object = None) -> UserError:
        line = self.line_of(str(near)) if near is not None else None
        where = f"{self.path}:{line}" if line else str(self.path)
        return UserError(f"{where}: {message}")

    def line_of(self, token: str) -> int | None:
        """First line holding `token` (outside comments), searching from the current config's name line."""
        lines = [text.split("#", 1)[0] for text in self.text.splitlines()]
        start = 0
        if self.region is not None:
            header = re.compile(r"^\s*name\s*=\s*[\"']" + re.escape(self.region) + r"[\"']")
            start = next((i for i, text in enumerate(lines) if header.search(text)), 0)
        pattern = re.compile(r"(?<![A-Za-z0-9_-])" + re.escape(token) + r"(?![A-Za-z0-9_-])")
        for number in [*range(start, len(lines)), *range(start)]:  # the config's own lines first (suite defaults)
            if pattern.search(lines[number]):
                return number + 1
        return None

    def table(self, value: object, what: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(f"{what} must be a table, got {value!r}")
        return value

    def check_keys(self, table: dict[str, Any], allowed: set[str], what: str) -> None:
        for key in table:
            if key not in allowed:
                raise self.fail(f"unknown key {key!r} in {what} (allowed: {', '.join(sorted(allowed))})", key)

    def typed(self, table: dict[str, Any], key: str, kind: type, what: str, default: Any = None) -> Any:
        if key not in table:
            if default is None:
                raise self.fail(f"{what} needs {key!r}")
            return default
        value = table[key]
        if kind is int and (type(value) is not int or value < 1):
            raise self.fail(f"{what}: {key} must be a positive integer, got {value!r}", key)
        if kind is not int and not isinstance(value, kind):
            raise self.fail(f"{what}: {key} must be a {kind.__name__}, got {value!r}", key)
        return value

    def name(self, table: dict[str, Any], key: str, what: str) -> str:
        value = self.typed(table, key, str, what)
        problem = name_problem(value)
        if problem:
            raise self.fail(f"{what}: {key} {problem}", value)
        return value

    def read(self) -> Suite:
        data = self.data
        self.check_keys(data, SUITE_KEYS, "the suite")
        name = self.name(data, "name", "the suite")
        self.typed(data, "steps", int, "the suite", 2)
        self.typed(data, "task", str, "the suite", "retrieval")
        self.typed(data, "attention", str, "the suite", "sdpa")
        self.table(data.get("task_options", {}), "the suite's task_options")
        seed = data.get("seed", 0)
        if type(seed) is not int or not 0 <= seed <= MAX_SEED:
            raise self.fail(f"the suite: seed must be an integer from 0 to {MAX_SEED}, got {seed!r}", "seed")
        configs = data.get("configs")
        if not isinstance(configs, list) or not configs:
            raise self.fail("the suite needs at least one [[configs]] table")
        specs: list[RunSpec] = []
        seen: set[str] = set()
        for config in configs:
            self.region = config.get("name") if isinstance(config, dict) and isinstance(config.get("name"), str) else None
            for spec in self.read_config(name, data, config):
                if spec.key in seen:
                    raise self.fail(f"run {spec.config}/{spec.label} appears twice", spec.label)
                seen.add(spec.key)
                specs.append(RunSpec.from_dict({**spec.to_dict(), "order": len(specs)}))
        self.region = None
        trackers = data.get("trackers")
        if trackers is not None:
            from .memory.registry import check_selection

            if not isinstance(trackers, list) or not all(isinstance(t, str) for t in trackers):
                raise self.fail(f"the suite: trackers must be a list of tracker names, got {trackers!r}", "trackers")
            try:
                check_selection(trackers)
            except UserError as exc:
                raise self.fail(f"the suite: {exc}", "trackers") from None
        return Suite(name, str(data.get("description", "")), str(self.path), specs, trackers)

    def read_config(self, suite: str, defaults: dict[str, Any], config: dict[str, Any]) -> list[RunSpec]:
        """One [[configs]] table -> its runs, one per methods entry, sharing the configuration's settings."""
        if not isinstance(config, dict):
            raise self.fail("every entry of configs must be a table")
        self.check_keys(config, CONFIG_KEYS, "a [[configs]] table")
        cname = self.name(config, "name", "a [[configs]] table")
        what = f"config {cname!r}"
        task_name, task_options, task = self.read_task(config, defaults, what)
        batch = self.typed(config, "batch", int, what)
        paper = config.get("paper")
        if paper is not None and not isinstance(paper, str):
            raise self.fail(f"{what}: paper must be the name of a paper table, e.g. \"table5-bert\", got {paper!r}",
                            "paper")
        shared = {
            "suite": suite, "config": cname, "task": task_name, "task_options": task_options,
            "steps": self.typed(config, "steps", int, what, defaults.get("steps", 2)),
            "seed": defaults.get("seed", 0), "mode": "",
            "accumulate": self.typed(config, "accumulate", int, what, 1),
            "attention": self.read_attention(config, defaults, what),
            "train": self.read_options_table(config, TrainSpec, what),
            "title": str(config.get("title", "")), "paper": paper,
            "towers": self.read_towers(config, task, what, cname),
            "memory": self.read_memory_options(config, defaults, what),
        }
        ddp = self.read_options_table(config, DdpSpec, what) or {}
        gpus = self.typed(config, "gpus", int, what, 1)
        methods = config.get("methods")
        if not isinstance(methods, list) or not methods:
            raise self.fail(f"{what} needs a non-empty methods list", cname)
        return [self.read_run(entry, what, cname, batch, gpus, ddp, shared) for entry in methods]

    def read_task(self, config: dict[str, Any], defaults: dict[str, Any], what: str) -> tuple[str, dict, Any]:
        """(task name, its options, the task object); the suite's task_options apply to the suite's task only."""
        from .tasks import TASKS  # here, not at the top: commands that only name a suite never load torch

        task_name = self.typed(config, "task", str, what, defaults.get("task", "retrieval"))
        if task_name not in TASKS:
            raise self.fail(f"{what}: unknown task {task_name!r} (known: {', '.join(TASKS.names())})", task_name)
        inherited = defaults.get("task_options", {}) if task_name == defaults.get("task", "retrieval") else {}
        task_options = {**inherited, **self.table(config.get("task_options", {}), f"{what}: task_options")}
        try:
            return task_name, task_options, TASKS.get(task_name).from_options(task_options)
        except UserError as exc:
            raise self.fail(f"{what}: {exc}", getattr(exc, "key", None)) from None

    def read_attention(self, config: dict[str, Any], defaults: dict[str, Any], what: str) -> str:
        attention = self.typed(config, "attention", str, what, defaults.get("attention", "sdpa"))
        if attention not in KERNELS:
            raise self.fail(f"{what}: attention must be one of {', '.join(KERNELS)}, got {attention!r}", attention)
        return attention

    def read_memory_options(self, config: dict[str, Any], defaults: dict[str, Any], what: str) -> dict[str, str]:
        """The memory options (checkpointing, approx_bp, layernorm) of a configuration or the suite's defaults; only
        values other than the default are kept, so specs without them keep their digests."""
        given = {key: config.get(key, defaults.get(key)) for key in MEMORY_CHOICES if key in config or key in defaults}
        try:
            return check_memory_options(given, what)
        except UserError as exc:
            raise self.fail(str(exc), next(iter(given.values()), None)) from None

    def read_options_table(self, config: dict[str, Any], kind: type, what: str) -> dict[str, Any] | None:
        """The `train` or `ddp` table (kind.name), checked, holding only the keys written: fields added
        later keep old digests. None when the configuration has no such table."""
        if kind.name not in config:
            return None
        try:
            given = self.table(config[kind.name], f"{what}: {kind.name}")
            return {k: v for k, v in kind.from_options(given).options().items() if k in given}
        except UserError as exc:
            raise self.fail(f"{what}: {exc}", getattr(exc, "key", kind.name)) from None

    def read_towers(self, config: dict[str, Any], task: Any, what: str, cname: str) -> list[TowerSpec]:
        from .backbones import BACKBONES, create_backbone, is_backbone

        towers = config.get("towers", [])
        if not isinstance(towers, list):
            raise self.fail(f"{what}: towers must be a list of tables", "towers")
        towers = [self.read_tower(t, what, BACKBONES, create_backbone, is_backbone) for t in towers]
        try:
            task.check_towers(len(towers))
        except UserError as exc:
            raise self.fail(f"{what}: {exc}", cname) from None
        if len({t.name for t in towers}) != len(towers):
            raise self.fail(f"{what}: tower names must be distinct", cname)
        return towers

    def read_run(self, entry: object, what: str, cname: str, batch: int, gpus_default: int, ddp: dict[str, Any],
                 shared: dict[str, Any]) -> RunSpec:
        """One methods entry (a name, or a table of method, label, gpus and the method's options) -> its run."""
        import torch  # here, not at the top: commands that only name a suite (results, report) never load torch

        from .backbones import create_backbone
        from .methods import METHODS

        run = {"method": entry} if isinstance(entry, str) else entry
        if not isinstance(run, dict) or "method" not in run:
            raise self.fail(f"{what}: a methods entry must be a name or a table with 'method'", cname)
        method = run["method"]
        if not isinstance(method, str) or method not in METHODS:
            raise self.fail(f"{what}: unknown method {method!r} (known: {', '.join(METHODS.names())})", method)
        options = {k: v for k, v in run.items() if k not in RUN_KEYS}
        try:
            checked = METHODS.get(method).from_options(options)
            if checked.checks_backbones:  # options that depend on the tower (e.g. PEFT's target modules)
                for t in (t for t in shared["towers"] if t.tuned):
                    with torch.device("meta"):
                        checked.check_backbone(create_backbone(t.backbone, t.weights, load=False))
        except UserError as exc:
            raise self.fail(f"{what}: {exc}", getattr(exc, "key", method)) from None
        label = run.get("label", method.replace(":", "-"))  # peft:lora -> peft-lora
        if name_problem(label):
            raise self.fail(f"{what}: label {name_problem(label)}", str(label))
        gpus = self.typed(run, "gpus", int, f"{what}, method {label!r}", gpus_default)
        if batch % gpus:
            raise self.fail(f"{what}: batch {batch} does not split evenly over {gpus} GPUs", label)
        return RunSpec(**shared, label=label, method=method, method_options=options, batch=batch // gpus, gpus=gpus,
                       ddp=ddp if gpus > 1 else {})  # one GPU: no DDP, digest unchanged

    def read_tower(self, tower: dict[str, Any], what: str, backbones: Any, create: Any, known: Any) -> TowerSpec:
        import torch

        from .tasks.pooling import POOLINGS

        if not isinstance(tower, dict):
            raise self.fail(f"{what}: every tower must be a table")
        tname = self.name(tower, "name", f"{what}, a tower")
        if tname == "targets":
            raise self.fail(f"{what}: 'targets' is reserved for the task's training targets", tname)
        backbone = self.typed(tower, "backbone", str, f"{what}, tower {tname!r}")
        if not known(backbone):
            raise self.fail(f"{what}: unknown backbone {backbone!r} (known: {', '.join(backbones.names())}, "
                            "hf:<hub id or folder>, timm:<model name>)", backbone)
        weights = self.typed(tower, "weights", str, f"tower {tname!r}", "random")
        try:
            with torch.device("meta"):  # the architecture every mode builds: the weights' own, when given
                built = create(backbone, weights, load=False)
        except UserError as exc:
            raise self.fail(f"{what}: tower {tname!r}: {exc}", backbone) from None
        except Exception as exc:  # noqa: BLE001  (a user's model may fail to build in any way: one line)
            raise self.fail(f"{what}: tower {tname!r}: cannot build {backbone}: {type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}", backbone) from None
        shape_keys = built.shape_defaults
        external = weights != "random" or backbone not in backbones
        architecture = hashlib.sha256(repr(built).encode()).hexdigest()[:16] if external else ""
        self.check_keys(tower, TOWER_KEYS | set(shape_keys), f"tower {tname!r} of {what} ({backbone})")
        shape = {k: self.typed(tower, k, int, f"tower {tname!r}") for k in shape_keys if k in tower}
        tokens, limit = positions_needed(built, shape), position_limit(built)
        if limit is not None and tokens > limit:
            raise self.fail(f"{what}: tower {tname!r}: {tokens} tokens do not fit {backbone}'s {limit} position "
                            "embeddings", "seq_len" if "seq_len" in tower else backbone)
        tuned = tower.get("tuned", True)
        if not isinstance(tuned, bool):
            raise self.fail(f"{what}: tower {tname!r}: tuned must be true or false", "tuned")
        pooling = tower.get("pooling")
        if pooling is not None and pooling not in POOLINGS:
            raise self.fail(f"{what}: tower {tname!r}: pooling must be one of {', '.join(POOLINGS)}", str(pooling))
        return TowerSpec(tname, backbone, tuned, weights, shape, pooling, architecture)


def position_limit(built: Any) -> int | None:
    """How many tokens a transformer's learned position table holds (None: no such table, e.g. a GRU or a CNN).
    RoBERTa's positions start after the padding index, so two of its 514 are never a token's."""
    for module in built.modules():
        config = getattr(module, "config", None)
        positions = getattr(config, "max_position_embeddings", None)
        if isinstance(positions, int):
            if "roberta" in str(getattr(config, "model_type", "")):
                positions -= (getattr(config, "pad_token_id", None) or 0) + 1
            return positions
    return None


def positions_needed(built: Any, shape: dict[str, int]) -> int:
    """The tokens a tower's position table must cover: its text (seq_len), and in a joint encoder the grid's
    tokens too, which follow the text in one sequence (backbones/joint.py)."""
    full = {**built.shape_defaults, **shape}
    return full.get("seq_len", 0) + (full.get("grid", 0) if getattr(built, "kind", "") == "joint" else 0)


def load_suite(name_or_path: str) -> Suite:
    return SuiteReader(resolve_suite(name_or_path)).read()


def select_methods(specs: list[RunSpec], wanted: str | None) -> list[RunSpec]:
    """Keep runs whose method name or label is in the comma-separated `wanted` list."""
    if not wanted:
        return specs
    names = [w.strip() for w in wanted.split(",") if w.strip()]
    if not names:
        raise UserError(f"--methods {wanted!r} names no method; give method names or labels, comma-separated")
    available = {s.method for s in specs} | {s.label for s in specs}
    missing = [n for n in names if n not in available]
    if missing:
        raise UserError(f"--methods: {', '.join(missing)} not in this suite (it has: {', '.join(sorted(available))})")
    return [s for s in specs if s.method in names or s.label in names]
