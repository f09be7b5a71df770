"""The run config of `daily` (and later `compare`): paths, data windows and hyperparameters."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field, fields, replace
from typing import Any

from ecdctr.models.adasparse import AdaSparseConfig
from ecdctr.models.ctr_model import ModelConfig
from ecdctr.serving.gate import GateConfig
from ecdctr.spec.validation import ConfigError, is_int, is_number, load_yaml, unknown_keys
from ecdctr.training.distribute import BATCH_SIZES, DISTRIBUTE_KEYS, STRATEGIES, DistributeConfig

TOP_KEYS = ("spec", "logs", "work", "export", "windows", "model", "tpm", "cpm", "actr",
            "transfer", "schedule", "gate", "seed", "beam_args", "lock", "distribute", "alert")
GATE_KEYS = ("max_auc_drop", "min_clicks", "max_calibration_error", "max_logloss_rise",
             "max_abs_diff", "max_fold_share", "keep_versions", "max_drift")
WINDOW_KEYS = ("tpm_days", "cpm_days", "actr_days", "actr_through_date", "evaluation_share")
MAX_WINDOW_DAYS = 3660  # ten years: a longer window is a typo (and dates would overflow)
TRAIN_KEYS = ("max_epochs", "patience", "validation_share", "validation_min_clicks", "batch_size",
              "learning_rate")
RENAMED_KEYS = {"epochs": "epochs is now max_epochs: fits stop early on their validation share",
                "validation_days": "the validation set is now a share of requests sized by its "
                                   "clicks: validation_share, validation_min_clicks"}
MODEL_KEYS = ("hidden", "dropout", "backbone", "cross_layers", "cross_structure", "multi_domain",
              "apg_rank", "apg_over_parameterize", "tpm_known_flag", "adasparse")
TRANSFER_KEYS = ("reset_batchnorm", "reset_batchnorm_affine", "shift_output_prior", "tpm",
                 "tpm_snapshots", "tpm_historical", "tpm_warm_start", "tpm_standardize",
                 "validate_update")
AUTO = "auto"  # the value of a setting the weekly derivation chooses by evidence (pipelines/auto.py)
AUTO_SETTINGS = ("transfer.tpm", "model.multi_domain")
SCHEDULE_KEYS = ("tpm", "cpm", "cpm_weekday", "tpm_day")
FREQUENCIES = ("daily", "weekly", "monthly", "once")
ADASPARSE_KEYS = ("form", "beta", "epsilon", "alpha_start", "alpha_end", "ramp_steps", "r_min",
                  "r_max", "lambda_start", "lambda_end", "placement", "pruner_input",
                  "ramp_epochs", "control_rate", "export_form")


@dataclass(frozen=True)
class Windows:
    """How many days before the run date each model reads, and whether the A-CTR of day D
    learns from D too (actr_through_date: its window of actr_days ends at D, less the
    evaluation_share of D's ad requests it is judged on; false: it ends the day before D and is
    judged on all of D)."""

    tpm_days: int = 180
    cpm_days: int = 30
    actr_days: int = 14
    actr_through_date: bool = True
    evaluation_share: float = 0.2


@dataclass(frozen=True)
class Schedule:
    """How often TPM and CPM are retrained. A step is due on day D when its output for D's
    period is missing; the period is D itself (daily), the week starting on weekday
    `cpm_weekday` (CPM) or Monday (TPM) that holds D (weekly), the month starting on day
    `tpm_day` (TPM) or the 1st (CPM) that holds D (monthly). `once`: due only while no output
    trained before D exists."""

    tpm: str = "monthly"
    cpm: str = "weekly"
    cpm_weekday: int = 0  # 0 = Monday ... 6 = Sunday
    tpm_day: int = 1  # 1-28, so that every month has it

    def period_start(self, step: str, date: dt.date) -> dt.date | None:
        """First day of the `step` ("tpm" or "cpm") period holding date; None for `once`."""
        frequency = getattr(self, step)
        if frequency == "daily":
            return date
        if frequency == "weekly":
            weekday = self.cpm_weekday if step == "cpm" else 0
            return date - dt.timedelta(days=(date.weekday() - weekday) % 7)
        if frequency == "monthly":
            day = self.tpm_day if step == "tpm" else 1
            if date.day >= day:
                return date.replace(day=day)
            previous = date.replace(day=1) - dt.timedelta(days=1)
            return previous.replace(day=day)
        return None


@dataclass(frozen=True)
class TransferConfig:
    """How knowledge moves between the models (the run config's `transfer:` section).

    reset_batchnorm: an A-CTR derived from a CPM gets BatchNorm statistics reset and
    re-estimated on its ad training days, before its fit and again after it (false: the CPM's
    statistics are kept and only the fine-tune's moving averages move them).
    reset_batchnorm_affine: also reset gamma/beta.
    shift_output_prior: move the output bias from the CPM's CTR to the ad CTR.
    tpm_snapshots: K, how many of the newest TPM snapshots a CPM reads (0: no TPM features).
    tpm_historical: a CPM reads only snapshots whose window ends before its own window starts
    (the TPM trains on the long window that ends where the CPM's begins), so the frozen vectors
    are out of sample in training as they are at serving.
    tpm_warm_start: each TPM starts from the previous snapshot's TPM, so successive snapshots
    share one embedding space.
    tpm_standardize: each exported snapshot table is standardised per dimension (zero mean,
    unit variance over its ids), so frozen vectors enter the CPM on the scale of its inputs.
    validate_update: the A-CTR's daily update validates by evidence (pipelines.steps.update_actr:
    early stopping on a held-out share of the new days' requests, kept only if it does not
    validate worse than the model it starts from); false: the epoch count its lineage chose.
    """

    reset_batchnorm: bool = True
    reset_batchnorm_affine: bool = False
    shift_output_prior: bool = True
    tpm_snapshots: int = 3
    tpm_historical: bool = True
    tpm_warm_start: bool = True
    tpm_standardize: bool = False
    validate_update: bool = False


@dataclass(frozen=True)
class RunConfig:
    """A validated run config; paths are absolute."""

    path: str
    spec: str
    logs: str
    work: str
    export: str
    windows: Windows = field(default_factory=Windows)
    tpm: ModelConfig = ModelConfig(hidden=(32,), learning_rate=0.002)
    cpm: ModelConfig = ModelConfig(batch_size=256, learning_rate=0.003)  # recipe_grid.md
    actr: ModelConfig = ModelConfig(learning_rate=0.0005, batch_size=512)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    schedule: Schedule = field(default_factory=Schedule)
    gate: GateConfig = field(default_factory=GateConfig)
    seed: int = 0
    beam_args: tuple[str, ...] = ()
    lock: str = ""  # a local file; <work>/.daily.lock when work is local
    alert: str = ""  # a shell command run for a failed or rejected day (README "Exit codes")
    distribute: DistributeConfig = field(default_factory=DistributeConfig)
    # settings set to `auto` (AUTO_SETTINGS): the weekly derivation trains one arm per value
    # and keeps the one that validates better by a clear margin (pipelines/auto.py)
    auto: tuple[str, ...] = ()


def load_config(path: str) -> RunConfig:
    """Loads and validates a run config; relative paths resolve against its folder."""
    doc = load_yaml(path)
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: the config must be a mapping with spec, logs, work and export. "
                          f"Fix: see configs/demo.yaml.")
    errors = [f"unknown key {k!r}. Fix: remove it or use one of {list(TOP_KEYS)}."
              for k in unknown_keys(doc, TOP_KEYS)]
    folder = os.path.dirname(os.path.abspath(path))
    paths = _paths(doc, folder, errors)
    lock = _lock(doc.get("lock"), folder, paths, errors)
    windows = _section(doc, "windows", WINDOW_KEYS, Windows(), errors)
    auto = _auto_settings(doc, errors)
    models = _models(doc, errors)
    if windows.actr_through_date and models["actr"].validation_share + windows.evaluation_share > 1:
        errors.append(f"actr.validation_share {models['actr'].validation_share} and "
                      f"windows.evaluation_share {windows.evaluation_share} add up to more than 1: "
                      f"the two shares of day D must not meet. Fix: lower one of them.")
    transfer = _transfer(doc.get("transfer") or {}, errors)
    schedule = _schedule(doc.get("schedule") or {}, errors)
    gate = _gate(doc.get("gate") or {}, errors)
    distribute = _distribute(doc.get("distribute") or {}, folder, errors)
    if auto and distribute.strategy in ("multi_worker_mirrored", "parameter_server"):
        errors.append(f"{', '.join(auto)}: auto is for one process (or distribute.strategy "
                      f"mirrored); a {distribute.strategy} cluster's workers do not train the "
                      f"arms. Fix: set the setting to a fixed value.")
    seed = doc.get("seed", 0)
    if not is_int(seed):
        errors.append(f"'seed' must be an integer, got {seed!r}.")
    alert = doc.get("alert") or ""
    if not isinstance(alert, str):
        errors.append(f"'alert' must be a shell command line (a string), got {type(alert).__name__}. "
                      "Fix: e.g. `alert: mail -s \"ecdctr $ECDCTR_OUTCOME\" oncall@example.com`.")
    beam_args = doc.get("beam_args", [])
    if not isinstance(beam_args, list) or not all(isinstance(a, str) for a in beam_args):
        errors.append("'beam_args' must be a list of pipeline option strings, "
                      "e.g. ['--direct_num_workers=2'].")
    if errors:
        raise ConfigError(f"{path}: invalid config:\n  - " + "\n  - ".join(errors))
    models = {k: replace(v, seed=seed) for k, v in models.items()}
    return RunConfig(path=os.path.abspath(path), windows=windows, transfer=transfer,
                     schedule=schedule, gate=gate, seed=seed, distribute=distribute,
                     beam_args=tuple(beam_args), lock=lock, alert=alert, auto=auto, **paths,
                     **models)


def _auto_settings(doc: dict, errors: list[str]) -> tuple[str, ...]:
    """The settings set to `auto` (AUTO_SETTINGS), taken out of doc's sections so that the
    models and the transfer options read their fixed default: multi_domain none (the simpler
    arm) and the TPM on with transfer.tpm_snapshots (the TPM arm's K)."""
    auto = []
    model = doc.get("model")
    if isinstance(model, dict) and model.get("multi_domain") == AUTO:
        doc["model"] = {k: v for k, v in model.items() if k != "multi_domain"}
        auto.append("model.multi_domain")
    for name in ("tpm", "cpm", "actr"):
        section = doc.get(name)
        if isinstance(section, dict) and section.get("multi_domain") == AUTO:
            errors.append(f"{name}.multi_domain: auto is not a choice a single model makes. Fix: "
                          f"set `model: {{multi_domain: auto}}` (CPM and A-CTR share it; the "
                          f"weekly derivation trains one arm per value and keeps the better).")
    transfer = doc.get("transfer")
    if isinstance(transfer, dict) and transfer.get("tpm") == AUTO:
        auto.append("transfer.tpm")
    return tuple(auto)


def _paths(doc: dict, folder: str, errors: list[str]) -> dict[str, str]:
    """spec, logs, work and export: URIs as given, local paths resolved against folder."""
    paths = {}
    for key in ("spec", "logs", "work", "export"):
        value = doc.get(key)
        if not isinstance(value, str) or not value:
            errors.append(f"'{key}' must be a path. Fix: e.g. `{key}: ../{key}`.")
            continue
        paths[key] = value if "://" in value else os.path.normpath(os.path.join(folder, value))
    return paths


def _lock(lock: Any, folder: str, paths: dict[str, str], errors: list[str]) -> str:
    """The daily run's local lock file: as given (resolved against folder), else
    <work>/.daily.lock for a local work folder; a remote one needs it given ("" with an error)."""
    if lock is not None and (not isinstance(lock, str) or not lock or "://" in lock):
        errors.append(f"'lock' must be a local file path, got {lock!r}. Fix: e.g. "
                      "`lock: /var/lock/ecdctr-daily.lock`.")
        return ""
    if lock:
        return os.path.normpath(os.path.join(folder, lock))
    if "://" in paths.get("work", ""):
        errors.append(f"work is {paths['work']}, where no file lock exists. Fix: give `lock:` a "
                      "local file path that every scheduled run of this config shares, e.g. "
                      "`lock: /var/lock/ecdctr-daily.lock`.")
        return ""
    return os.path.join(paths.get("work", folder), ".daily.lock")


def _models(doc: dict, errors: list[str]) -> dict[str, ModelConfig]:
    """The tpm, cpm and actr model configs: each section's training keys over its default;
    CPM and A-CTR take their structure from the shared `model:` section, the TPM its own."""
    base = RunConfig.__dataclass_fields__
    shared = _section(doc, "model", MODEL_KEYS, ModelConfig(), errors)
    models = {}
    for name in ("tpm", "cpm", "actr"):
        default = base[name].default
        models[name] = _section(doc, name, TRAIN_KEYS + (MODEL_KEYS if name == "tpm" else ()),
                                default, errors)
        if name != "tpm":
            structure = {k: getattr(shared, k) for k in MODEL_KEYS}
            models[name] = replace(models[name], **structure)
    return models


def _section(doc: dict, key: str, allowed: tuple[str, ...], default: Any, errors: list[str]) -> Any:
    body = doc.get(key) or {}
    if not isinstance(body, dict):
        errors.append(f"'{key}' must be a mapping of {list(allowed)}.")
        return default
    errors += [f"{key}: unknown key {k!r}. Fix: use one of {list(allowed)}"
               + (f" ({RENAMED_KEYS[k]})." if k in RENAMED_KEYS else ".")
               for k in unknown_keys(body, allowed)]
    values = {}
    for name in allowed:
        if name in body:
            value = _checked_value(key, name, body[name], errors)
            if value is not _INVALID:
                values[name] = value
    names = {f.name for f in fields(default)}
    try:
        return replace(default, **{k: v for k, v in values.items() if k in names})
    except ValueError as e:
        errors.append(f"{key}: {e}.")
        return default


_INVALID = object()  # a value _checked_value refused (its error is in `errors`)


def _checked_value(key: str, name: str, value: Any, errors: list[str]) -> Any:
    """Section `key`'s value of `name`, checked and normalised; _INVALID (and an error) when
    it is out of range or of the wrong type."""
    if name == "adasparse":
        value = _adasparse(key, value, errors)
        return _INVALID if value is None else value
    elif name in ("backbone", "cross_structure", "multi_domain"):
        if not isinstance(value, str):
            errors.append(f"{key}.{name} must be a string, got {value!r}.")
            return _INVALID
    elif name == "hidden":
        if not isinstance(value, list) or not value or not all(is_int(v) and v > 0 for v in value):
            errors.append(f"{key}.hidden must be a list of positive layer sizes, e.g. [128, 64].")
            return _INVALID
        value = tuple(value)
    elif name in ("learning_rate", "dropout"):
        if not is_number(value) or not (0 <= value < 1 if name == "dropout" else value > 0):
            errors.append(f"{key}.{name} is {value!r}; it must be a number in range.")
            return _INVALID
        value = float(value)
    elif name in ("apg_over_parameterize", "tpm_known_flag", "actr_through_date"):
        if not isinstance(value, bool):
            errors.append(f"{key}.{name} must be true or false, got {value!r}.")
            return _INVALID
    elif name == "validation_share":
        if not is_number(value) or not 0 <= value < 1:
            errors.append(f"{key}.validation_share must be a number in [0, 1) (0: no "
                          f"validation, train max_epochs), got {value!r}.")
            return _INVALID
        value = float(value)
    elif name == "evaluation_share":
        if not is_number(value) or not 0 < value < 1:
            errors.append(f"{key}.evaluation_share must be a number in (0, 1): the share of "
                          f"D's ad requests the A-CTR of D is judged on, got {value!r}.")
            return _INVALID
        value = float(value)
    elif name == "validation_min_clicks":
        if not is_int(value) or value < 0:
            errors.append(f"{key}.validation_min_clicks must be an integer >= 0, got {value!r}.")
            return _INVALID
    elif name in WINDOW_KEYS and is_int(value) and value > MAX_WINDOW_DAYS:
        errors.append(f"{key}.{name} is {value!r} days; a window is at most {MAX_WINDOW_DAYS} "
                      f"(ten years). Fix: give the number of days the window covers.")
        return _INVALID
    elif not is_int(value) or value < 1:
        errors.append(f"{key}.{name} must be a positive integer, got {value!r}.")
        return _INVALID
    return value


def _adasparse(key: str, body: Any, errors: list[str]) -> AdaSparseConfig | None:
    if not isinstance(body, dict):
        errors.append(f"{key}.adasparse must be a mapping of {list(ADASPARSE_KEYS)}.")
        return None
    bad = unknown_keys(body, ADASPARSE_KEYS)
    if bad:
        errors.append(f"{key}.adasparse: unknown key(s) {bad}. Fix: use {list(ADASPARSE_KEYS)}.")
        return None
    try:
        return replace(AdaSparseConfig(), **body)
    except (TypeError, ValueError) as e:
        errors.append(f"{key}.adasparse: {e}.")
        return None


def _mapping(body: Any, key: str, allowed: tuple[str, ...], example: str,
             errors: list[str]) -> bool:
    """Whether a section's body is a mapping; errors get what is wrong with it (not a mapping,
    or its unknown keys)."""
    if not isinstance(body, dict):
        errors.append(f"'{key}' must be a mapping of {list(allowed)}"
                      + (f", e.g. {example}." if example else "."))
        return False
    errors += [f"{key}: unknown key {k!r}. Fix: use one of {list(allowed)}."
               for k in unknown_keys(body, allowed)]
    return True


def _transfer(body: Any, errors: list[str]) -> TransferConfig:
    if not _mapping(body, "transfer", TRANSFER_KEYS, "{reset_batchnorm: true}", errors):
        return TransferConfig()
    values = {}
    for key in TRANSFER_KEYS:
        if key not in body:
            continue
        value = body[key]
        if key == "tpm":
            if value not in (True, False, AUTO):
                errors.append(f"transfer.tpm must be true, false or {AUTO} (the weekly derivation "
                              f"trains the A-CTR with and without TPM features and keeps the one "
                              f"that validates better), got {value!r}.")
            continue
        if key == "tpm_snapshots":
            if not is_int(value) or value < 0:
                errors.append(f"transfer.tpm_snapshots must be an integer >= 0 (0: no TPM), "
                              f"got {value!r}.")
                continue
        elif not isinstance(value, bool):
            errors.append(f"transfer.{key} must be true or false, got {value!r}.")
            continue
        values[key] = value
    tpm, snapshots = body.get("tpm", True), values.get("tpm_snapshots", TransferConfig.tpm_snapshots)
    if tpm is False:
        if "tpm_snapshots" in body and snapshots > 0:
            errors.append(f"transfer.tpm is false but transfer.tpm_snapshots is {snapshots}. Fix: "
                          f"remove one of them (tpm: false is tpm_snapshots: 0).")
        values["tpm_snapshots"] = 0
    elif tpm == AUTO and snapshots == 0:
        errors.append("transfer.tpm is auto but transfer.tpm_snapshots is 0: the TPM arm would read "
                      "no snapshot. Fix: give tpm_snapshots >= 1 (the TPM arm's K, e.g. 3).")
    return replace(TransferConfig(), **values)


def _schedule(body: Any, errors: list[str]) -> Schedule:
    if not _mapping(body, "schedule", SCHEDULE_KEYS, "{tpm: monthly, cpm: weekly}", errors):
        return Schedule()
    values = {}
    for key in ("tpm", "cpm"):
        if key in body:
            value = body[key]
            if value not in FREQUENCIES:
                errors.append(f"schedule.{key} is {value!r}; it must be one of {list(FREQUENCIES)}.")
                continue
            values[key] = value
    for key, low, high, meaning in (("cpm_weekday", 0, 6, "0 = Monday ... 6 = Sunday"),
                                    ("tpm_day", 1, 28, "a day every month has")):
        if key in body:
            value = body[key]
            if not is_int(value) or not low <= value <= high:
                errors.append(f"schedule.{key} must be an integer {low}-{high} ({meaning}), "
                              f"got {value!r}.")
                continue
            values[key] = value
    return replace(Schedule(), **values)


def _gate(body: Any, errors: list[str]) -> GateConfig:
    if not _mapping(body, "gate", GATE_KEYS, "", errors):
        return GateConfig()
    values = {}
    for key, value in body.items():
        if key not in GATE_KEYS:
            continue
        if key == "keep_versions":
            ok, need = is_int(value) and value >= 1, "a positive integer"
        elif key == "max_drift":
            ok, need = is_int(value) and value >= 0, "an integer >= 0"
        elif key == "min_clicks":  # DeLong's variance needs two of each class
            ok, need = is_int(value) and value >= 2, "an integer >= 2"
        else:
            ok, need = is_number(value) and value >= 0, "a number >= 0"
        if not ok:
            errors.append(f"gate.{key} must be {need}, got {value!r}.")
            continue
        values[key] = value
    return replace(GateConfig(), **values)


def _distribute(body: Any, folder: str, errors: list[str]) -> DistributeConfig:
    if not _mapping(body, "distribute", DISTRIBUTE_KEYS, "{strategy: multi_worker_mirrored}",
                    errors):
        return DistributeConfig()
    values = {}
    for key, allowed in (("strategy", STRATEGIES), ("batch_size", BATCH_SIZES)):
        if key in body:
            if body[key] not in allowed:
                errors.append(f"distribute.{key} is {body[key]!r}; it must be one of "
                              f"{list(allowed)}.")
                continue
            values[key] = body[key]
    if "backup" in body:
        value = body["backup"]
        if not isinstance(value, str) or not value:
            errors.append("distribute.backup must be a folder path (default <work>/backup).")
        else:
            values["backup"] = value if "://" in value else os.path.normpath(
                os.path.join(folder, value))
    for key, low in (("max_shards", 0), ("min_shard_bytes", 1), ("wait_seconds", 1)):
        if key in body:
            value = body[key]
            if not is_int(value) or value < low:
                errors.append(f"distribute.{key} must be an integer >= {low}, got {value!r}.")
                continue
            values[key] = value
    return replace(DistributeConfig(), **values)
