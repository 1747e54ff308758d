"""A study unit trained by federated learning: every source site a client, simulated here.

:func:`train_federated` is what the study runner calls for a method with ``federated =
True``: it writes each source site's own cases to its client folder (the only data that
client ever reads), plans the federation (the model, the method, the rounds), runs it with
Flower's simulation engine (Ray; one CPU per client) and returns the global model of the
best round. The ClientApp and ServerApp are the ones a real deployment runs
(:mod:`senolab.federated.apps`).
"""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch

from senolab.adaptation import METHODS
from senolab.checkpoint import load_checkpoint
from senolab.engine.config import ConfigError, DataConfig, ExperimentConfig
from senolab.engine.data import PreparedData
from senolab.federated.clients import load_round_model, model_layout
from senolab.federated.server import INITIAL_FILE, RESULT_FILE, Federation
from senolab.federated.site import write_site

CLIENTS = "clients"  # the unit's folder of simulated sites: one folder per site, removed when done


def plan_federation(base: ExperimentConfig, data: PreparedData, method: str, options: dict, sites: list[str],
                    folder: str | Path) -> Federation:
    """The federation of ``method`` over ``sites``: its plan (the model, loss and training
    sections without the data section, the method, rounds and local epochs), the initial
    model's arrays (``initial.pt``; shared ones are what round 1 sends) and
    ``federation.json``, all in ``folder``."""
    from senolab.engine.trainer import model_from_config, seed_everything

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    built = METHODS.build(method, **options)
    rounds = built.rounds or max(1, base.train.epochs // built.local_epochs)
    experiment = base.model_copy(deep=True, update={"data": DataConfig()})
    experiment.train.epochs = rounds * built.local_epochs  # the learning-rate schedule spans the federation
    experiment.train.time_budget_s = None  # the server keeps the time budget, round by round
    seed_everything(experiment.train.seed)
    model = model_from_config(experiment, data)
    layout = model_layout(model, built)
    state = model.state_dict()
    # in the model's own order: DP's clipping mod compares the reply's key order with the message's
    torch.save({"shared": {k: v for k, v in state.items() if k in layout.shared},
                "local": {k: v for k, v in state.items() if k in layout.local}}, folder / INITIAL_FILE)
    plan = {"experiment": experiment.model_dump(mode="json"), "method": method, "options": options,
            "rounds": rounds, "local_epochs": built.local_epochs}
    federation = Federation(plan=plan, sites=list(sites), folder=str(folder), strategy=built.strategy,
                            server_options=built.server_options(), fraction_fit=built.fraction_fit, dp=built.dp,
                            keeps_norms_local=built.keeps_norms_local, time_budget_s=base.train.time_budget_s)
    federation.save()
    return federation


def backend_config(n_clients: int) -> dict:
    """Flower's Ray backend: one CPU per client, no dashboard, at most this machine's CPUs."""
    return {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"include_dashboard": False, "num_cpus": max(1, min(n_clients, os.cpu_count() or 1))}}


def simulate(federation: Federation, site_files: list[str], callbacks=(), progress: bool = False) -> dict:
    """Run ``federation`` with Flower's simulation engine; its result (best round's arrays,
    FedBN's averaged norms; ``federated.pt``) as saved in its folder."""
    from senolab._optional import require

    run_simulation = require("flwr.simulation").run_simulation  # names the `federated` extra when missing
    from senolab.federated.apps import make_client_app, make_server_app

    if not progress:  # Flower logs every round's sampling and aggregation at INFO
        logging.getLogger("flwr").setLevel(logging.WARNING)
    run_simulation(server_app=make_server_app(federation, callbacks, progress),
                   client_app=make_client_app(site_files), num_supernodes=len(site_files),
                   backend_config=backend_config(len(site_files)))
    return load_checkpoint(Path(federation.folder) / RESULT_FILE, "cpu")


def train_federated(config, unit, base: ExperimentConfig, progress: bool, callbacks, selection):
    """The study unit's federated training: (global model of the best round on the run's
    device, the method, best epoch = best round - 1). Resumes after the last completed
    round (``last.pt`` in the unit's folder)."""
    from senolab.engine.trainer import model_from_config, pick_device, seed_everything

    if selection.metric != "val_score":
        raise ConfigError(f"selection: {config.selection!r} is not available to federated methods: the server "
                          "selects rounds by the clients' source validation only (selection: source_val)")
    method = METHODS.build(unit.spec.name, **unit.spec.options)
    sites = [method.site] if method.site is not None else list(unit.pair.sources)
    unknown = sorted(set(sites) - set(unit.pair.sources))
    if unknown:
        raise ConfigError(f"methods: {unit.spec.label} trains at {unknown}, which are not source sites "
                          f"{unit.pair.sources}")
    clients = Path(unit.folder) / CLIENTS
    result_file = Path(unit.folder) / RESULT_FILE
    if not result_file.exists():  # written once the federation's last round (and FedBN's norms) is done
        site_files = [str(write_site(unit.data, site, clients / site)) for site in sites]
        federation = plan_federation(base, unit.data, unit.spec.name, unit.spec.options, sites, unit.folder)
        simulate(federation, site_files, callbacks, progress)
    result = load_checkpoint(result_file, "cpu")
    seed_everything(base.train.seed)
    model = model_from_config(base, unit.data)
    load_round_model(model, result["arrays"], result["local"])
    shutil.rmtree(clients, ignore_errors=True)
    (Path(unit.folder) / INITIAL_FILE).unlink(missing_ok=True)
    return model.to(pick_device(base.train.device)), method, int(result["round"]) - 1
