"""Experiment files: YAML -> a validated :class:`ExperimentConfig`, every error naming its key path.

Schema (every key but ``methods`` is optional; unknown keys are errors)::

    name: cpu_small                  # default: the file's stem
    description: one line for listings
    data: {dataset: digits, path: null, image_size: 16}       # path: required by file data sets
    model: {name: small_cnn, kwargs: {}}
    original: {preset: paper, epochs: 80, lr: 0.05, ...}      # TrainConfig fields; preset default 'paper'
    retrain: {...}                   # default: the Original's; a preset here replaces it as the base
    unlearn: {preset: paper_unlearn, epochs: 10, lr: 0.01}    # the base of every method
    scenario: {kind: random, ratio: 0.1}   # (the default) or {kind: class, classes: [truck]}
                                           # or {kind: sequential, ratio: 0.5, chunks: 5}
    methods:                         # registry names of coun_fast.unlearn.METHODS, NAME+cl allowed
      - {name: coun, hparams: {lam: 0.5}, train: {lr: 0.02}, label: CoUn}   # label default: name
      - {name: bad_teacher, protocol: authors}   # the authors' optimiser protocol (default: coun)
      - ft                           # a bare name is {name: ft}
    seeds: [0, 1, 2]                 # one Original, split, Retrain and unlearning run per seed
    device: null                     # cpu, cuda, cuda:1 ...; null = a GPU when there is one
    output: runs/cpu_small           # default: runs/<name>
    cache: null                      # Original/Retrain cache; null = $COUN_FAST_CACHE or ~/.cache/coun_fast
    sweep: {seed: 100, enabled: false, grid: {CoUn: {lam: [0.1, 1.0], lr: [0.01, 0.05]}}}
    curves: true                     # per-epoch forget/retain/test accuracy of each method (an evaluation per epoch)

TrainConfig sections take the fields of :class:`coun_fast.train.TrainConfig` except ``seed``,
``device`` and ``progress``, which the runner sets. A method trains with the ``unlearn`` section
(``protocol: coun``, the default) or with its authors' optimiser protocol on top of it
(``protocol: authors``; see docs/fidelity.md); its ``train`` fields override either. A sweep
grid's parameters are the method's hyperparameters or those TrainConfig fields. Method names,
hyperparameter names and values are checked against the registry (``cl_lam`` and
``cl_temperature`` for ``+cl``; ``+cl`` only where the plug-in applies), so a typo fails before any
training. What depends on the machine and the data (the device, the data set's files and class
names, the model against its images, the scenario's feasibility, the output and cache folders) is
checked by :func:`coun_fast.experiment.check.check_experiment` (``coun-fast run --check``), which
every run calls first.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from coun_fast.data import DATASETS
from coun_fast.data.registry import resolve_location
from coun_fast.files import relative_paths
from coun_fast.models import MODELS
from coun_fast.train import PRECISIONS, PRESETS, TrainConfig, parse_device
from coun_fast.unlearn import METHODS, PROTOCOLS, method_config, method_names, resolve_hparams
from coun_fast.unlearn.cl_plugin import CL_DEFAULTS, split_name
from coun_fast.workflow import DataSource

SET_BY_RUNNER = ("seed", "device", "progress")
TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in SET_BY_RUNNER)
"""The TrainConfig fields an experiment file may set."""
SCENARIO_KINDS = ("random", "class", "sequential")
TOP_KEYS = ("name", "description", "data", "model", "original", "retrain", "unlearn", "scenario", "methods",
            "seeds", "device", "output", "cache", "sweep", "curves")
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


class ConfigError(ValueError):
    """An invalid experiment file; the message starts with the key path (``methods[2].name: ...``)."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    kwargs: dict


@dataclasses.dataclass(frozen=True)
class Scenario:
    """What to forget: ``kind`` with its ``ratio`` (random, sequential), ``classes`` (class) and
    ``chunks`` (sequential: the forget set is removed in this many stages)."""

    kind: str = "random"
    ratio: float | None = None
    classes: tuple | None = None
    chunks: int | None = None

    def split_arguments(self) -> dict:
        """Keyword arguments of :func:`coun_fast.workflow.make_forget_split` (without the seed)."""
        return {"kind": self.kind, "ratio": self.ratio, "classes": list(self.classes) if self.classes else None,
                "num_chunks": self.chunks}

    def describe(self) -> str:
        if self.kind == "class":
            return f"class-wise forgetting of {', '.join(map(str, self.classes))}"
        if self.kind == "sequential":
            return f"sequential forgetting of {self.ratio:.0%} in {self.chunks} stages"
        return f"random {self.ratio:.0%} forgetting"


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """One method of the experiment: registry ``name`` (maybe ``+cl``), its ``hparams``, the
    TrainConfig overrides ``train`` (on top of the experiment's ``unlearn`` under ``protocol``) and
    its ``label``."""

    name: str
    label: str
    hparams: dict
    train: dict
    protocol: str = "coun"

    def train_config(self, base: TrainConfig) -> TrainConfig:
        """The method's TrainConfig: ``base`` under :attr:`protocol`, then :attr:`train`."""
        return method_config(METHODS[split_name(self.name)[0]], base, self.protocol, self.train)

    def with_values(self, values: Mapping) -> "MethodSpec":
        """A copy with ``values`` (a sweep point) set: hyperparameters into ``hparams``, the rest into ``train``."""
        allowed = method_hparams(self.name)
        hparams = {**self.hparams, **{k: v for k, v in values.items() if k in allowed}}
        train = {**self.train, **{k: v for k, v in values.items() if k not in allowed}}
        return dataclasses.replace(self, hparams=hparams, train=train)


@dataclasses.dataclass(frozen=True)
class Sweep:
    """Grid search on a held-out ``seed``: ``grid[label][param]`` lists the values to try; the
    point with the smallest Avg.Gap is used for the main seeds. Runs when ``enabled``."""

    seed: int
    grid: dict
    enabled: bool = False


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """A validated experiment (see the module docstring for the file format)."""

    name: str
    description: str
    data: DataSource
    model: ModelSpec
    original: TrainConfig
    retrain: TrainConfig
    unlearn: TrainConfig
    scenario: Scenario
    methods: tuple[MethodSpec, ...]
    seeds: tuple[int, ...]
    device: str | None
    output: Path
    cache: Path | None
    sweep: Sweep | None
    curves: bool = True

    def to_dict(self, relative: bool = False) -> dict:
        """JSON-safe values (paths as text); ``relative``: as stored in results.json and config.json,
        ``output`` as ``.`` and paths inside it relative to it."""
        out = dataclasses.asdict(self)
        out["output"] = str(self.output)
        out["cache"] = None if self.cache is None else str(self.cache)
        return relative_paths(out, self.output) if relative else out


# -- helpers ---------------------------------------------------------------------------------------
def _fail(path: str, message: str):
    raise ConfigError(f"{path}: {message}")


def _mapping(value: Any, path: str, accepted: tuple[str, ...]) -> dict:
    """``value`` as a dict (None -> {}) whose keys are all ``accepted``."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        _fail(path, f"must be a mapping with the keys {', '.join(accepted)}; got {type(value).__name__}")
    unknown = [str(k) for k in value if k not in accepted]
    if unknown:
        _fail(f"{path}.{unknown[0]}" if path else unknown[0],
              f"unknown key; accepted{' under ' + path if path else ''}: {', '.join(accepted)}")
    return dict(value)


def _whole(value: Any, path: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(path, f"must be an integer >= {minimum}; got {value!r}")
    return value


def _train_config(base: TrainConfig, fields: dict, path: str) -> TrainConfig:
    """``base`` with ``fields`` replaced; TrainConfig's own checks reported under ``path``."""
    try:
        return base.replace(**fields)
    except (ValueError, TypeError) as error:
        message = str(error)
        field = message.split(" ", 1)[0]
        if field in fields:
            raise ConfigError(f"{path}.{message}") from None
        raise ConfigError(f"{path}: {message}") from None


def _train_section(raw: Any, path: str, default: TrainConfig, default_preset: str | None) -> TrainConfig:
    fields = _mapping(raw, path, ("preset", *TRAIN_KEYS))
    preset = fields.pop("preset", default_preset)
    if preset is not None:
        if preset not in PRESETS:
            _fail(f"{path}.preset", f"unknown preset {preset!r}; available: {', '.join(sorted(PRESETS))}")
        default = PRESETS[preset]
    return _train_config(default, fields, path)


def method_hparams(name: str) -> set[str]:
    """The hyperparameter names method ``name`` (a registered name, maybe with ``+cl``) accepts."""
    base, with_cl = split_name(name)
    return set(METHODS[base].defaults) | (set(CL_DEFAULTS) if with_cl else set())


def _method_names() -> str:
    return ", ".join(n for n in method_names() if split_name(n)[0] != "retrain")


def _checked_hparams(name: str, hparams: Mapping, path: str) -> None:
    """Every value of ``hparams`` checked by the method's own rules; errors under ``path``."""
    try:
        resolve_hparams(name, dict(hparams), check_ranks=False)  # the ranks: check_distributed_experiment
    except ValueError as error:
        message = str(error)
        key = message.split(" ", 1)[0]
        raise ConfigError(f"{path}.{key}: {message}" if key in hparams else f"{path}: {message}") from None


# -- sections --------------------------------------------------------------------------------------
def _data(raw: Any) -> DataSource:
    fields = _mapping(raw, "data", ("dataset", "path", "image_size"))
    dataset = fields.get("dataset", "digits")
    if not isinstance(dataset, str) or dataset.lower() not in DATASETS:
        _fail("data.dataset", f"unknown dataset {dataset!r}; available: {', '.join(DATASETS)}")
    dataset = dataset.lower()
    try:
        path = resolve_location(dataset, fields.get("path"))
    except (ValueError, FileNotFoundError) as error:
        hint = "; set it in the file or pass --data PATH" if fields.get("path") is None else ""
        _fail("data.path", f"{error}{hint}")
    size = fields.get("image_size")
    if size is not None:
        _whole(size, "data.image_size", 1)
    return DataSource(dataset, path, size)


def _model(raw: Any) -> ModelSpec:
    fields = _mapping(raw, "model", ("name", "kwargs"))
    name = fields.get("name", "resnet18")
    if not isinstance(name, str) or name.lower() not in MODELS:
        _fail("model.name", f"unknown model {name!r}; available: {', '.join(MODELS)}")
    kwargs = fields.get("kwargs") or {}
    if not isinstance(kwargs, Mapping):
        _fail("model.kwargs", f"must be a mapping of constructor arguments; got {type(kwargs).__name__}")
    return ModelSpec(name.lower(), dict(kwargs))


def _scenario(raw: Any) -> Scenario:
    if raw is None:
        return Scenario("random", 0.1)
    fields = _mapping(raw, "scenario", ("kind", "ratio", "classes", "chunks"))
    kind = fields.get("kind", "random")
    if kind not in SCENARIO_KINDS:
        _fail("scenario.kind", f"must be one of {', '.join(SCENARIO_KINDS)}; got {kind!r}")
    needs = {"random": ("ratio",), "class": ("classes",), "sequential": ("ratio", "chunks")}[kind]
    for key in ("ratio", "classes", "chunks"):
        if key in needs and fields.get(key) is None:
            _fail(f"scenario.{key}", f"required for kind {kind!r}")
        if key not in needs and fields.get(key) is not None:
            _fail(f"scenario.{key}", f"does not apply to kind {kind!r} (it takes {', '.join(needs)})")
    ratio = fields.get("ratio")
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio < 1):
        _fail("scenario.ratio", f"must be a number in (0, 1); got {ratio!r}")
    classes = fields.get("classes")
    if classes is not None:
        classes = classes if isinstance(classes, list) else [classes]
        if not classes or not all(isinstance(c, (str, int)) and not isinstance(c, bool) for c in classes):
            _fail("scenario.classes", f"must be class names or indices (one or a list); got {fields['classes']!r}")
        classes = tuple(classes)
    chunks = fields.get("chunks")
    if chunks is not None:
        _whole(chunks, "scenario.chunks", 1)
    return Scenario(kind, None if ratio is None else float(ratio), classes, chunks)


def _method(raw: Any, path: str, unlearn: TrainConfig) -> MethodSpec:
    if isinstance(raw, str):
        raw = {"name": raw}
    fields = _mapping(raw, path, ("name", "label", "hparams", "train", "protocol"))
    name = fields.get("name")
    if not isinstance(name, str):
        _fail(f"{path}.name", f"required: a method name; available: {_method_names()}")
    base, _ = split_name(name)
    if base == "retrain":
        _fail(f"{path}.name", "Retrain is run for every seed as the reference of Avg.Gap; remove it from methods")
    if base not in METHODS or name not in method_names():
        refused = METHODS[base].cl_refused if base in METHODS else None
        _fail(f"{path}.name", f"there is no {name!r}: {refused}" if refused else
              f"unknown method {name!r}; available: {_method_names()}")
    label = fields.get("label", name)
    if not isinstance(label, str) or not _LABEL.fullmatch(label) or label in ("Retrain", "Original"):
        _fail(f"{path}.label", f"must be a name of letters, digits and _.+- other than Retrain/Original; got {label!r}")
    hparams = fields.get("hparams") or {}
    if not isinstance(hparams, Mapping):
        _fail(f"{path}.hparams", f"must be a mapping; got {type(hparams).__name__}")
    allowed = method_hparams(name)
    for key in hparams:
        if key not in allowed:
            _fail(f"{path}.hparams.{key}", f"method {name!r} has no such hyperparameter; it takes: "
                                           f"{', '.join(sorted(allowed)) or 'none'}")
    _checked_hparams(name, hparams, f"{path}.hparams")
    train = _mapping(fields.get("train"), f"{path}.train", TRAIN_KEYS)
    protocol = fields.get("protocol", "coun")
    if protocol not in PROTOCOLS:
        _fail(f"{path}.protocol", f"must be one of {', '.join(PROTOCOLS)}; got {protocol!r}")
    try:
        start = method_config(METHODS[base], unlearn, protocol)
    except ValueError as error:
        _fail(f"{path}.protocol", str(error))
    _train_config(start, train, f"{path}.train")
    return MethodSpec(name, label, dict(hparams), train, protocol)


def _seeds(raw: Any) -> tuple[int, ...]:
    seeds = [0] if raw is None else raw if isinstance(raw, list) else [raw]
    if not seeds:
        _fail("seeds", "must list at least one seed")
    for i, seed in enumerate(seeds):
        _whole(seed, f"seeds[{i}]", 0)
    if len(set(seeds)) != len(seeds):
        _fail("seeds", f"must not repeat a seed; got {seeds}")
    return tuple(seeds)


def _sweep(raw: Any, methods: tuple[MethodSpec, ...], seeds: tuple[int, ...], unlearn: TrainConfig) -> Sweep | None:
    if raw is None:
        return None
    fields = _mapping(raw, "sweep", ("seed", "grid", "enabled"))
    if "seed" not in fields:
        _fail("sweep.seed", "required: the held-out seed the grid is tried on")
    seed = _whole(fields["seed"], "sweep.seed", 0)
    if seed in seeds:
        _fail("sweep.seed", f"must be held out: {seed} is among the seeds {list(seeds)}")
    enabled = fields.get("enabled", False)
    if not isinstance(enabled, bool):
        _fail("sweep.enabled", f"must be true or false; got {enabled!r}")
    grid = fields.get("grid") or {}
    if not isinstance(grid, Mapping):
        _fail("sweep.grid", "must map method labels to {parameter: [values]}")
    by_label = {m.label: m for m in methods}
    checked = {}
    for label, params in grid.items():
        path = f"sweep.grid.{label}"
        if label not in by_label:
            _fail(path, f"no method has this label; labels: {', '.join(by_label)}")
        if not isinstance(params, Mapping) or not params:
            _fail(path, "must map parameters to lists of values")
        spec = by_label[label]
        allowed = method_hparams(spec.name)
        for param, values in params.items():
            if param not in allowed and param not in TRAIN_KEYS:
                takes = ", ".join(sorted(allowed)) or "none"
                _fail(f"{path}.{param}", f"not a hyperparameter of {spec.name!r} ({takes}) nor a training field "
                                         f"({', '.join(TRAIN_KEYS)})")
            if not isinstance(values, list) or not values:
                _fail(f"{path}.{param}", f"must be a non-empty list of values; got {values!r}")
            for i, value in enumerate(values):
                if param in allowed:
                    try:
                        resolve_hparams(spec.name, {**spec.hparams, param: value}, check_ranks=False)
                    except ValueError as error:
                        _fail(f"{path}.{param}[{i}]", str(error))
                else:
                    _train_config(spec.train_config(unlearn), {param: value}, f"{path}.{param}[{i}]")
        checked[label] = {param: list(values) for param, values in params.items()}
    return Sweep(seed, checked, enabled)


def grid_points(grid: dict) -> list[dict]:
    """The cartesian product of ``{param: [values]}`` as a list of ``{param: value}``."""
    names = list(grid)
    return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def point_name(values: dict) -> str:
    """A folder name for a grid point, e.g. ``lam=0.5,lr=0.01``."""
    return re.sub(r"[^A-Za-z0-9_.=,+-]", "_", ",".join(f"{k}={v}" for k, v in values.items()))


def method_variants(config: ExperimentConfig) -> list[tuple[str, MethodSpec]]:
    """Every method configuration a run of ``config`` may train, each with the key that names it in
    errors: ``methods[i]`` for each method and, when the sweep is enabled, ``sweep.grid.LABEL[POINT]``
    for each point of its grid (the point the sweep chooses is then one of them)."""
    variants = [(f"methods[{i}]", spec) for i, spec in enumerate(config.methods)]
    if config.sweep is not None and config.sweep.enabled:
        by_label = {spec.label: spec for spec in config.methods}
        for label, grid in config.sweep.grid.items():
            variants += [(f"sweep.grid.{label}[{point_name(values)}]", by_label[label].with_values(values))
                         for values in grid_points(grid)]
    return variants


# -- entry points ----------------------------------------------------------------------------------
def parse_config(raw: Any, *, name: str = "experiment") -> ExperimentConfig:
    """Validate the mapping of an experiment file; raises :class:`ConfigError` naming the key path."""
    top = _mapping(raw, "", TOP_KEYS)
    name = top.get("name", name)
    if not isinstance(name, str) or not _LABEL.fullmatch(name):
        _fail("name", f"must be a name of letters, digits and _.+-; got {name!r}")
    data = _data(top.get("data"))
    model = _model(top.get("model"))
    original = _train_section(top.get("original"), "original", PRESETS["paper"], "paper")
    retrain = _train_section(top.get("retrain"), "retrain", original, None)
    unlearn = _train_section(top.get("unlearn"), "unlearn", PRESETS["paper_unlearn"], "paper_unlearn")
    scenario = _scenario(top.get("scenario"))
    raw_methods = top.get("methods")
    if not isinstance(raw_methods, list) or not raw_methods:
        _fail("methods", f"required: a non-empty list of methods; available: {_method_names()}")
    methods = tuple(_method(m, f"methods[{i}]", unlearn) for i, m in enumerate(raw_methods))
    labels = [m.label for m in methods]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        _fail("methods", f"labels must be unique; repeated: {', '.join(repeated)} (set a label to tell them apart)")
    seeds = _seeds(top.get("seeds"))
    device = top.get("device")
    if device is not None:
        try:
            parse_device(device)
        except ValueError as error:
            _fail("device", str(error))
    for key in ("output", "cache", "description"):
        if top.get(key) is not None and not isinstance(top[key], str):
            _fail(key, f"must be text; got {top[key]!r}")
    output = Path(top.get("output") or f"runs/{name}").expanduser()
    cache = Path(top["cache"]).expanduser() if top.get("cache") else None
    sweep = _sweep(top.get("sweep"), methods, seeds, unlearn)
    curves = top.get("curves", True)
    if not isinstance(curves, bool):
        _fail("curves", f"must be true or false; got {curves!r}")
    return ExperimentConfig(name, top.get("description") or "", data, model, original, retrain, unlearn, scenario,
                            methods, seeds, device, output, cache, sweep, curves)


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-4`` as text; this loader reads it as a float, as YAML 1.2 does."""


_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
                              list("-+0123456789."))


def read_yaml(path: str | Path) -> dict:
    """The mapping in the YAML file ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no experiment file {str(path)!r}")
    try:
        raw = yaml.load(path.read_bytes().decode("utf-8"), Loader=_Loader)
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except (yaml.YAMLError, RecursionError) as error:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(error).split())}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must hold a mapping of the experiment's sections")
    return raw


REFERENCES = ("retrain", "original")
"""What every experiment runs besides its methods: accepted (and ignored) in ``--methods``."""


TRAIN_SECTIONS = ("original", "retrain", "unlearn")
"""The experiment file's TrainConfig sections (methods' ``train`` mappings sit on top of ``unlearn``)."""


def _sweep_grid(raw: dict) -> dict:
    """The raw sweep grid ``{label: {param: [values]}}``; empty when the file has none or it is not
    a mapping (parse_config then says what is wrong)."""
    sweep = raw.get("sweep")
    grid = sweep.get("grid") if isinstance(sweep, dict) else None
    return grid if isinstance(grid, dict) else {}


def _set_precision(raw: dict, precision: str) -> None:
    """Every training run of ``raw`` at ``precision``: the TrainConfig sections (``retrain`` only when
    the file has one; otherwise it takes the Original's) and the methods' ``train`` mappings that
    name a precision. A sweep grid may not vary it."""
    for section in TRAIN_SECTIONS:
        if section == "retrain" and raw.get(section) is None:
            continue
        if not isinstance(raw.get(section), dict):
            raw[section] = {}
        raw[section]["precision"] = precision
    for entry in raw.get("methods") or []:
        if isinstance(entry, dict) and isinstance(entry.get("train"), dict) and "precision" in entry["train"]:
            entry["train"]["precision"] = precision
    swept = [label for label, params in _sweep_grid(raw).items() if isinstance(params, dict) and "precision" in params]
    if swept:
        raise ConfigError(f"--precision: the sweep grid varies precision for {', '.join(map(str, swept))}; "
                          "remove it from the grid or drop --precision")


def apply_overrides(raw: dict, *, seeds=None, methods=None, output=None, device=None, cache=None, data=None,
                    sweep: bool = False, curves: bool | None = None, precision: str | None = None) -> dict:
    """A copy of the raw mapping with command-line overrides applied (None = keep the file's value).

    ``methods`` keeps the listed methods (by label or name) and their sweep grids; ``retrain`` and
    ``original`` may be listed too (every run trains and evaluates them, as the references).
    ``sweep=True`` enables the file's sweep section (an error when it has none); ``data`` sets
    ``data.path``; ``curves`` sets ``curves``; ``precision`` sets the precision of every training
    run (the Original, Retrain and every method; the cache keys follow, as they hash the recipes).
    """
    raw = copy.deepcopy(raw)
    if curves is not None:
        raw["curves"] = curves
    if precision is not None:
        if precision not in PRECISIONS:
            raise ConfigError(f"--precision: must be one of {', '.join(PRECISIONS)}; got {precision!r}")
        _set_precision(raw, precision)
    for key, value in (("seeds", seeds), ("output", output), ("device", device), ("cache", cache)):
        if value is not None:
            raw[key] = list(value) if key == "seeds" else str(value)
    if data is not None:
        if not isinstance(raw.get("data"), dict):
            raw["data"] = {}
        raw["data"]["path"] = str(data)
    if methods is not None:
        entries = [m if isinstance(m, dict) else {"name": m} for m in raw.get("methods") or []]
        known = {e.get("label", e.get("name")): e for e in entries}
        names = {e.get("name") for e in entries}
        methods = [m for m in methods if str(m).lower() not in REFERENCES]
        unknown = [m for m in methods if m not in known and m not in names]
        if unknown:
            raise ConfigError(f"--methods: {', '.join(unknown)} not in the experiment; its methods: {', '.join(known)}")
        raw["methods"] = [e for label, e in known.items() if label in methods or e.get("name") in methods]
        grid = _sweep_grid(raw)
        if grid:
            kept = {e.get("label", e.get("name")) for e in raw["methods"]}
            raw["sweep"]["grid"] = {label: params for label, params in grid.items() if label in kept}
    if sweep:
        if not isinstance(raw.get("sweep"), dict):
            raise ConfigError("--sweep: the experiment has no sweep section (sweep: {seed: N, grid: {...}})")
        raw["sweep"]["enabled"] = True
    return raw


def load_config(source: str | Path | Mapping, **overrides) -> ExperimentConfig:
    """An :class:`ExperimentConfig` from a YAML file or a mapping, with :func:`apply_overrides`.
    A ConfigError about a file's content names the file."""
    if isinstance(source, Mapping):
        return parse_config(apply_overrides(dict(source), **overrides), name="experiment")
    raw = read_yaml(source)
    try:
        return parse_config(apply_overrides(raw, **overrides), name=Path(source).stem)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


__all__ = ["ConfigError", "ExperimentConfig", "MethodSpec", "ModelSpec", "Scenario", "Sweep", "TRAIN_KEYS",
           "apply_overrides", "grid_points", "load_config", "method_hparams", "method_variants", "parse_config",
           "point_name", "read_yaml"]
