"""The Flower ClientApp and ServerApp of senolab's federations, for simulation and deployment.

The same handlers serve both. In a deployment (a SuperLink, one SuperNode per hospital,
``flwr run``; docs/federated.md) the apps are this module's ``client_app`` and
``server_app``: a SuperNode is started with ``--node-config "site-data='<folder>/site.pkl'
partition-id=<k>"`` and the ServerApp reads ``federation`` (the path of a federation.json,
:class:`~senolab.federated.server.Federation`) from the run config. In a simulation
(:func:`senolab.federated.train_federated`) :func:`make_client_app` is given the site files
by partition, and :func:`make_server_app` the federation and the study's callbacks.

Every message a client handles passes the data wall (:func:`data_wall_mod`, the outermost
mod); central differential privacy's client-side clipping (:func:`dp_clipping_mod`) clips
the update inside it when the server's config carries a clipping norm.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from senolab.federated.clients import (ClientState, client_trainer, kept_entries, load_round_model, model_layout,
                                       plan_layout, train_round, validation_metrics)
from senolab.federated.server import Federation, serve
from senolab.federated.site import read_site
from senolab.federated.wall import (ARRAYS, CONFIG, EVALUATE, LOCAL_NORMS, METRICS, TRAIN, DataWallViolation,
                                    check_instruction, check_reply)

SITE_DATA, PARTITION = "site-data", "partition-id"  # SuperNode node-config keys


def _message_type(message: Message) -> str:
    return message.metadata.message_type


def site_path(context: Context, site_files: Sequence[str] | None) -> str:
    """This client's site file: by partition in a simulation, from its node config in a deployment."""
    if site_files is not None:
        return str(site_files[int(context.node_config[PARTITION])])
    if SITE_DATA not in context.node_config:
        raise DataWallViolation(f"this SuperNode has no {SITE_DATA!r} in its node config: start it with "
                                f"--node-config \"{SITE_DATA}='<folder>/site.pkl' {PARTITION}=<k>\"")
    return str(context.node_config[SITE_DATA])


def data_wall(site_files: Sequence[str] | None = None):
    """The data wall as a Flower mod for a ClientApp (``site_files`` as in :func:`make_client_app`)."""

    def data_wall_mod(message: Message, context: Context, call_next) -> Message:
        """Refuse a server message that asks for more than parameters and config on the
        allowlist, and a reply that carries more than the model's arrays and scalar metrics."""
        action = _message_type(message)
        check_instruction(action, message.content, shapes=None)  # the action and config keys, before reading the plan
        config = message.content.config_records.get(CONFIG)
        if config is None or "plan" not in config:
            raise DataWallViolation(f"data wall: a {action} message must carry the federation's plan")
        layout = plan_layout(str(config["plan"]), site_path(context, site_files))
        check_instruction(action, message.content, layout.shapes)
        reply = call_next(message, context)
        if not reply.has_error():
            expected = {TRAIN: set(layout.shared), EVALUATE: set(), LOCAL_NORMS: set(layout.local)}[action]
            check_reply(action, reply.content, layout.shapes, expected)
        return reply

    return data_wall_mod


def dp_clipping_mod(message: Message, context: Context, call_next) -> Message:
    """Flower's fixed clipping of the update (central DP, client side), when the server asks for it."""
    from flwr.clientapp.mod import fixedclipping_mod

    config = message.content.config_records.get(CONFIG)
    if _message_type(message) == TRAIN and config is not None and "clipping_norm" in config:
        return fixedclipping_mod(message, context, call_next)
    return call_next(message, context)


def make_client_app(site_files: Sequence[str] | None = None) -> ClientApp:
    """The ClientApp; ``site_files``: the simulation's site file per partition (None: each
    SuperNode's own ``site-data``). The data wall is its outermost mod, so it checks each
    reply as it leaves, after DP's clipping."""
    app = ClientApp(mods=[data_wall(site_files), dp_clipping_mod])

    @app.train()
    def train(message: Message, context: Context) -> Message:
        torch.set_num_threads(1)  # one CPU per client
        path = site_path(context, site_files)
        plan_text, plan, round_ = _plan(message)
        trainer = client_trainer(plan_text, path).start_round()
        layout = model_layout(trainer.model, trainer.method)
        state = ClientState(Path(path).parent)
        load_round_model(trainer.model, message.content[ARRAYS].to_torch_state_dict(), state.at(round_ - 1))
        trainer.method.begin_round(trainer.model)
        losses = train_round(trainer, round_, int(plan["local_epochs"]))
        state.save(round_, kept_entries(trainer.model, layout))
        shared = {k: v.cpu() for k, v in trainer.model.state_dict().items() if k in layout.shared}
        metrics = {"num-examples": len(trainer.train_loader.dataset), PARTITION: _partition(context), **losses}
        return Message(RecordDict({ARRAYS: ArrayRecord(shared), METRICS: MetricRecord(metrics)}), reply_to=message)

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        path = site_path(context, site_files)
        _, data = read_site(path)
        plan_text, _, round_ = _plan(message)
        trainer = client_trainer(plan_text, path).trainer
        load_round_model(trainer.model, message.content[ARRAYS].to_torch_state_dict(),
                         ClientState(Path(path).parent).at(round_))
        metrics = validation_metrics(trainer.model, data, trainer.method, trainer.config.train.batch_size, trainer.device)
        metrics.update({"num-examples": len(data.case_ids("val")), PARTITION: _partition(context)})
        return Message(RecordDict({METRICS: MetricRecord(metrics)}), reply_to=message)

    @app.query("local_norms")
    def local_norms(message: Message, context: Context) -> Message:
        """FedBN's one release: this site's BatchNorm entries of the asked round."""
        path = site_path(context, site_files)
        _, data = read_site(path)
        plan_text, _, round_ = _plan(message)
        layout = plan_layout(plan_text, path)
        kept = ClientState(Path(path).parent).at(round_) or {}
        arrays = {k: v for k, v in kept.items() if k in layout.local}
        metrics = {"num-examples": len(data.case_ids("train")), PARTITION: _partition(context)}
        return Message(RecordDict({ARRAYS: ArrayRecord(arrays), METRICS: MetricRecord(metrics)}), reply_to=message)

    return app


def _plan(message: Message) -> tuple[str, dict, int]:
    """The message's plan (as sent, and read) and round."""
    config = message.content[CONFIG]
    text = str(config["plan"])
    return text, json.loads(text), int(config["server-round"])


def _partition(context: Context) -> int:
    return int(context.node_config.get(PARTITION, 0))


def make_server_app(federation: Federation | None = None, callbacks: Sequence[object] = (),
                    progress: bool = False) -> ServerApp:
    """The ServerApp; ``federation`` None: read from the run config's ``federation`` path."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        serve(grid, federation or Federation.load(str(context.run_config["federation"])), callbacks, progress)

    return app


client_app = make_client_app()
server_app = make_server_app()
