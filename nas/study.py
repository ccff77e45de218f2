"""The Optuna study a search records into: every true evaluation is one trial (the architecture string, key,
strategy, seed, batch, every metric, the latency table and feasibility as user attributes; the genes as
parameters; the objectives as values, named by `set_metric_names`; the constraints as Optuna constraints, so
optuna-dashboard shows history, feasibility and the Pareto front under the metrics' names).

Constraints are written in two forms: Optuna 5's named ones (`trial.constraints["latency_ms<=0.2"]`) and the
older list under the trial system attribute `constraints`, the only one optuna-dashboard 0.21 reads (without
it every trial shows as feasible there).

Storage is any SQLAlchemy URL (`sqlite:///runs/NAME/study.db` on one machine; PostgreSQL or MySQL for many
workers). A search resumes from its study: `history` gives back the recorded batches of a strategy and seed
in order, for `Strategy.replay`.
"""

from __future__ import annotations

import contextlib
import math
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from nas.objectives import Columns, Constraint, Objective
from search_spaces import SearchSpace
from search_spaces.errors import HwnasError

#: User attributes hwnas sets on each trial besides the metric values. `worker` tells apart the workers that
#: share a study (each its own strategy and seed stream), `batch` and `row` place a trial in its worker's
#: history, `evaluator` says what measured it (`supernet`; `pick`: a candidate of a predictor-driven search
#: measured at its end, not part of the strategy's history), `predicted_accuracy` what the predictor said. A search
#: ranked by val_loss also keeps `rank_score`, what its strategy was told for accuracy (a column `history` returns).
_ATTRS = ("arch", "key", "strategy", "seed", "worker", "batch", "row", "evaluator", "predicted_accuracy",
          "latency_table", "feasible")
_LOCK_RETRIES = 20
#: The trial system attribute optuna-dashboard reads constraints from (Optuna's older list form).
_DASHBOARD_CONSTRAINTS = "constraints"
#: Study user attribute prefix of latencies measured on the runtime, one per architecture key.
MEASURED_PREFIX = "measured_latency_ms:"


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise HwnasError("the search study needs optuna; install it with `pip install optuna`") from None
    return optuna


@contextlib.contextmanager
def quiet_optuna() -> Iterator[Any]:
    """Optuna (the module) with its log level at WARNING inside the block, restored after: its INFO line per
    study and trial would flood a search's output, and a library user's own setting is theirs."""
    optuna = _optuna()
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield optuna
    finally:
        optuna.logging.set_verbosity(before)


def open_study(storage: str, name: str, objectives: Sequence[Objective], space: SearchSpace) -> Any:
    """Create the study `name` in `storage`, or open it if it exists (it must have the same objectives and
    space: a study holds one search)."""
    with quiet_optuna():
        return _open_study(storage, name, objectives, space)


def _open_study(storage: str, name: str, objectives: Sequence[Objective], space: SearchSpace) -> Any:
    optuna = _optuna()
    directions = ["maximize" if o.direction == "max" else "minimize" for o in objectives]
    wanted = {"objectives": [str(o) for o in objectives], "space": space.name}
    import time

    for attempt in range(5):  # workers starting together race to create the schema; the loser opens it
        try:
            study = optuna.create_study(storage=_storage(storage), study_name=name, directions=directions,
                                        load_if_exists=True)
            break
        except Exception as err:  # noqa: BLE001 - SQLAlchemy and Optuna errors: name the storage and the cause
            text = _error_text(err)
            if attempt == 4 or not any(s in text for s in ("UNIQUE constraint", "locked", "already exists")):
                raise HwnasError(f"cannot open study {name!r} in {storage}: {err}") from None
            time.sleep(0.2 * (attempt + 1))
    have = {k: study.user_attrs.get(k) for k in wanted}
    conflict = any(v is not None and v != wanted[k] for k, v in have.items())
    foreign = all(v is None for v in have.values()) and bool(study.get_trials(deepcopy=False))
    if not conflict and not foreign:
        for key, value in wanted.items():
            if have[key] is None:  # a new study (or one another worker is labelling right now)
                study.set_user_attr(key, value)
    else:
        raise HwnasError(f"study {name!r} in {storage} holds a search with {have}, not {wanted}; give another "
                         f"--study name")
    if study.metric_names is None:  # also a study made before hwnas named them
        set_metric_names(study, [o.metric for o in objectives])
    return study


def claim_setting(study: Any, name: str, key: str, value: Any, *, before: Any) -> None:
    """Record the search setting `key` (e.g. `rank_by`) as a study user attribute, or refuse a study that holds
    another value (every worker and resumption of a study must agree). `before`: the value of a study that has
    trials but no record of `key` (made before hwnas recorded it)."""
    have = study.user_attrs.get(key)
    if have is None and study.get_trials(deepcopy=False):
        have = before
    if have is None:
        with quiet_optuna():
            study.set_user_attr(key, value)
    elif have != value:
        raise HwnasError(f"study {name!r} holds a search with {key} {have!r}, not {value!r}; resume it with "
                         f"{key} {have!r} (hwnas search --{key.replace('_', '-')} {have}) or give another --study name")


def set_metric_names(study: Any, names: Sequence[str]) -> None:
    """Name the study's objectives (optuna-dashboard plots them as "accuracy", not "Objective 0"); Optuna's
    "experimental" warning for it is silenced here only."""
    optuna = _optuna()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(names))


def _storage(url: str) -> Any:
    """An RDB storage for `url`; SQLite waits up to a minute for a lock (several workers on one file)."""
    if not url.startswith("sqlite"):
        return url
    from optuna.storages import RDBStorage

    return RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})


def _add_trial(study: Any, trial: Any) -> None:
    """Add one trial (one transaction); retried while another worker holds the database lock. A failed attempt
    writes nothing, so a retry neither loses nor duplicates the trial."""
    import time

    for attempt in range(_LOCK_RETRIES):
        try:
            study.add_trial(trial)
            return
        except Exception as err:  # noqa: BLE001 - SQLAlchemy's OperationalError, which Optuna wraps
            if not _locked(err) or attempt == _LOCK_RETRIES - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


def _error_text(err: BaseException) -> str:
    """The message of `err` and of the error it wraps (Optuna's StorageInternalError wraps SQLAlchemy's)."""
    return f"{err} {err.__cause__} {err.__context__}"


def _locked(err: BaseException) -> bool:
    return "locked" in _error_text(err)


def constraint_value(constraint: Constraint, value: float) -> float:
    """Optuna's form: <= 0 when met (the signed distance to the bound)."""
    if math.isnan(value):
        return math.inf
    return value - constraint.bound if constraint.op in ("<=", "<") else constraint.bound - value


def record(study: Any, space: SearchSpace, genes: np.ndarray, columns: Columns, objectives: Sequence[Objective],
           constraints: Sequence[Constraint] = (), *, strategy: str, seed: int, batch: int, worker: int = 0,
           evaluator: str = "supernet", first_row: int = 0, extra: dict[str, np.ndarray] | None = None,
           latency_table: str | None = None) -> None:
    """Add one trial per gene row, each in its own transaction (`first_row`: the index in the batch of the
    first of `genes`, when a cut-off batch is completed). `extra`: more per-row user attributes;
    `latency_table`: the id of the table that predicted `latency_ms`."""
    from optuna.distributions import IntDistribution

    optuna = _optuna()

    distributions = {g.name: IntDistribution(0, g.choices - 1) for g in space.genes}
    metrics = {name: np.asarray(values) for name, values in columns.items()}
    priced = [c for c in constraints if c.metric in metrics]
    trials = []
    for i, row in enumerate(np.atleast_2d(genes)):
        arch = space.from_genes(row)
        attrs: dict[str, Any] = {"arch": arch.to_str(), "key": arch.key, "strategy": strategy, "seed": seed,
                                 "worker": worker, "batch": batch, "row": first_row + i, "evaluator": evaluator}
        if latency_table is not None:
            attrs["latency_table"] = latency_table
        for name, values in (extra or {}).items():
            attrs[name] = np.asarray(values)[i].item()
        for name, values in metrics.items():
            value = values[i].item()
            attrs[name] = value if not (isinstance(value, float) and math.isnan(value)) else None
        named = {str(c): constraint_value(c, float(metrics[c.metric][i])) for c in priced}
        if named:
            attrs["feasible"] = all(v <= 0 for v in named.values())
        values_out = [float(metrics[o.metric][i]) for o in objectives]
        ok = all(math.isfinite(v) for v in values_out)
        trials.append(optuna.trial.create_trial(
            state=optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL,
            values=values_out if ok else None,
            params={g.name: int(row[j]) for j, g in enumerate(space.genes)}, distributions=distributions,
            user_attrs=attrs, constraints=named,
            system_attrs={_DASHBOARD_CONSTRAINTS: [_json_finite(v) for v in named.values()]} if named else None))
    with quiet_optuna():
        for trial in trials:
            _add_trial(study, trial)


def _json_finite(value: float) -> float:
    """`value`, with an unmeasured metric's infinite violation as the largest float: optuna-dashboard sends
    constraints as JSON, where `Infinity` would make the browser reject the whole study."""
    return value if math.isfinite(value) else sys.float_info.max


def note_measured(study: Any, picks: Sequence[dict[str, Any]]) -> int:
    """Put the runtime-measured latency of each pick that has one (`measured_latency_ms`, as `hwnas export` sets
    it) in the study's user attributes, `measured_latency_ms:KEY` (a finished trial's attributes cannot change);
    returns how many."""
    noted = 0
    with quiet_optuna():
        for pick in picks:
            measured = pick.get("measured_latency_ms")
            if measured is not None and not math.isnan(float(measured)):
                study.set_user_attr(f"{MEASURED_PREFIX}{pick['key']}", float(measured))
                noted += 1
    return noted


def history(study: Any, space: SearchSpace, *, strategy: str, seed: int,
            worker: int = 0) -> list[tuple[np.ndarray, Columns]]:
    """The batches recorded by `strategy` with `seed` on `worker`, in order: (gene rows, metric columns). Rows
    of a batch come in their order within it (a batch cut off while it was recorded comes back shorter)."""
    batches: dict[int, list[Any]] = {}
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        if (attrs.get("strategy") == strategy and attrs.get("seed") == seed and attrs.get("worker", 0) == worker
                and "batch" in attrs and attrs.get("evaluator", "supernet") != "pick"):
            batches.setdefault(int(attrs["batch"]), []).append(trial)
    out: list[tuple[np.ndarray, Columns]] = []
    for index in sorted(batches):
        trials = sorted(batches[index], key=lambda t: (t.user_attrs.get("row", 0), t.number))
        genes = np.array([[trial.params[g.name] for g in space.genes] for trial in trials], dtype=np.int64)
        names = [k for k in trials[0].user_attrs if k not in _ATTRS]
        columns = {name: np.array([np.nan if t.user_attrs.get(name) is None else t.user_attrs[name]
                                   for t in trials]) for name in names}
        out.append((genes, columns))
    return out


def dashboard_server(storage: str, host: str = "127.0.0.1", port: int = 8080) -> Any:
    """optuna-dashboard for `storage`, bound to `host`:`port` (0: a free port) but not yet serving: a WSGI
    server that answers requests in threads and logs none of them (`serve_forever` serves, `server_close`
    frees the port). The port is taken here, so a busy one is a clear error before anything is printed."""
    import socketserver
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    _optuna()
    try:
        from optuna_dashboard import wsgi
    except ImportError:
        raise HwnasError("the dashboard needs optuna-dashboard; install it with `pip install optuna-dashboard`") \
            from None

    class Server(socketserver.ThreadingMixIn, WSGIServer):
        daemon_threads = True

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass  # one line per request (the page polls) would bury the URL

    try:
        return make_server(host, port, wsgi(_storage(storage)), server_class=Server, handler_class=QuietHandler)
    except OSError as err:
        raise HwnasError(f"cannot serve the dashboard on {host}:{port}: {err.strerror or err}; give another "
                         f"--port") from None


def dashboard_url(server: Any) -> str:
    """The address a bound `dashboard_server` answers on."""
    host, port = server.server_address[:2]
    return f"http://{host}:{port}/"


@contextlib.contextmanager
def dashboard_thread(storage: str, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """optuna-dashboard for `storage` served from a background thread inside the block (on a free port by
    default); yields its URL, and stops and frees the port after."""
    import threading

    server = dashboard_server(storage, host, port)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield dashboard_url(server)
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


def serve_dashboard(storage: str, host: str = "127.0.0.1", port: int = 8080,
                    announce: Callable[[str], None] | None = None) -> None:
    """Serve optuna-dashboard for `storage` until interrupted (blocks); `announce` gets its URL once the port is
    bound."""
    server = dashboard_server(storage, host, port)
    try:
        if announce is not None:
            announce(dashboard_url(server))
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
