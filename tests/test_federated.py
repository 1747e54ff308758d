"""Federated learning with Flower: the methods, the data wall, a study killed mid-federation
and resumed by the CLI, with every round tracked. Each Flower simulation starts Ray (seconds
on two cores), so the tests share few of them and ask much of each."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from senolab.adaptation import METHODS
from senolab.engine.config import StudyConfig
from senolab.federated.wall import DataWallViolation, check_instruction, check_reply

TINY = {
    "kind": "study",
    "name": "tiny_federated",
    "base": {"data": {"synthetic": {"n_sites": 3, "images_per_site": 24, "image_size": 64}, "image_size": 32,
                      "split": {"val_fraction": 0.25}},
             "model": {"heads": {"classification": True, "segmentation": False, "bbox": False}},
             "train": {"epochs": 2, "batch_size": 8}, "evaluation": {"bootstrap": 20}},
    "protocol": "pairwise",
    "pairs": [{"sources": ["site_a", "site_b"], "target": "site_c"}],
    "methods": ["erm", "fedbn", "fedbn_adabn"],
    "embedding_figure": False,
}


@pytest.fixture(autouse=True)
def no_ray_left_behind():
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _records(**records):
    from flwr.app import RecordDict

    return RecordDict(records)


def _arrays(**arrays):
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({name: Array(value) for name, value in arrays.items()})


# ------------------------------------------------------------------ the methods

def test_federated_methods_are_registered_with_paper_defaults_and_local_expands_per_site():
    assert {"fedavg", "fedprox", "fedbn", "fedbn_adabn", "fedadam", "local"} <= set(METHODS.names())
    for name in ("fedavg", "fedprox", "fedbn", "fedadam", "local"):
        assert METHODS.get(name).federated, name
    assert METHODS.get("fedbn_adabn").trains_as == "fedbn" and METHODS.get("fedbn_adabn").transductive
    prox, adam = METHODS.build("fedprox"), METHODS.build("fedadam")
    assert (prox.proximal_mu, prox.local_epochs, prox.fraction_fit) == (0.01, 1, 1.0)
    assert adam.server_options() == {"eta": 0.01, "beta_1": 0.9, "beta_2": 0.99, "tau": 0.001}
    from senolab.runners.study import pair_methods

    config = StudyConfig.model_validate({**TINY, "methods": ["erm", "local"]})
    specs = pair_methods(config, config.pairs[0])
    assert [(s.label, s.options) for s in specs] == [("erm", {}), ("local_site_a", {"site": "site_a"}),
                                                     ("local_site_b", {"site": "site_b"})]
    with pytest.raises(ValueError, match="dp needs both"):
        METHODS.build("fedavg", dp={"noise_multiplier": 1.0})


def test_fedprox_adds_the_proximal_term_to_the_training_step():
    from senolab.models import build_model

    torch.manual_seed(0)
    model = build_model("unet", {"cls": {"num_classes": 2}})
    method = METHODS.build("fedprox", proximal_mu=0.5)
    method.begin_round(model)
    batch = {"image": torch.randn(2, 1, 32, 32)}
    assert method(model, batch, None, 0, 1).losses["proximal"].item() == 0.0  # at the global model
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1)
    n = sum(p.numel() for p in model.parameters())
    assert method(model, batch, None, 0, 1).losses["proximal"].item() == pytest.approx(0.5 * 0.5 * n * 0.01, rel=1e-3)


def test_fedbn_keeps_batch_norm_at_the_client():
    from senolab.federated.clients import model_layout
    from senolab.models import build_model

    model = build_model("unet", {"cls": {"num_classes": 2}})
    fedbn, fedavg = model_layout(model, METHODS.build("fedbn")), model_layout(model, METHODS.build("fedavg"))
    assert fedbn.local and all("running" in k or k.endswith((".weight", ".bias")) for k in fedbn.local)
    assert not fedavg.local and fedavg.shared == fedbn.shared | fedbn.local
    assert not any(k.endswith("num_batches_tracked") for k in fedavg.shared)  # counters never travel


def test_a_hospital_writes_its_site_file_from_its_own_data_config(tmp_path):
    from senolab.federated.site import main, read_site

    config = tmp_path / "data.yaml"
    config.write_text(yaml.safe_dump({"data": {"synthetic": {"n_sites": 2, "images_per_site": 20, "image_size": 64},
                                               "image_size": 32, "split": {"val_fraction": 0.25}}}))
    main(["--config", str(config), "--site", "site_b", "--out", str(tmp_path / "site")])
    site, data = read_site(str(tmp_path / "site" / "site.pkl"))
    assert site == "site_b" and set(data.cohort.table["site"]) == {"site_b"}  # nothing of site_a
    assert set(data.parts) == {"train", "val"} and len(data.parts) == 20
    assert set(data.cohort.arrays) == set(data.cohort.table["case_id"])
    with pytest.raises(ValueError, match="no case at site 'site_z'"):
        main(["--config", str(config), "--site", "site_z", "--out", str(tmp_path / "z")])


# ------------------------------------------------------------------ the data wall, record by record

SHAPES = {"w": (2, 3), "bn.running_mean": (3,)}


def test_the_wall_refuses_a_server_that_asks_for_data():
    from flwr.app import ConfigRecord

    check_instruction("train", _records(config=ConfigRecord({"server-round": 1, "plan": "{}"})), SHAPES)
    with pytest.raises(DataWallViolation, match="query.images"):
        check_instruction("query.images", _records(), SHAPES)
    with pytest.raises(DataWallViolation, match="send-images"):
        check_instruction("train", _records(config=ConfigRecord({"plan": "{}", "send-images": True})), SHAPES)


def test_the_wall_refuses_a_reply_that_carries_data():
    from flwr.app import ConfigRecord, MetricRecord

    arrays = _arrays(w=np.zeros((2, 3), np.float32))
    ok = _records(arrays=arrays, metrics=MetricRecord({"num-examples": 5, "loss": 0.3, "loss_cls": 0.3}))
    check_reply("train", ok, SHAPES, {"w"})
    image = _arrays(w=np.zeros((2, 3), np.float32), image=np.zeros((1, 32, 32), np.float32))
    with pytest.raises(DataWallViolation, match="'image'"):
        check_reply("train", _records(arrays=image, metrics=MetricRecord({"num-examples": 5})), SHAPES, {"w"})
    reshaped = _arrays(w=np.zeros((6, 1), np.float32))  # the right name, smuggling another shape
    with pytest.raises(DataWallViolation, match="shape"):
        check_reply("train", _records(arrays=reshaped, metrics=MetricRecord({"num-examples": 5})), SHAPES, {"w"})
    with pytest.raises(DataWallViolation, match="one number"):
        check_reply("evaluate", _records(metrics=MetricRecord({"val_auc": [0.1, 0.9, 0.3]})), SHAPES, set())
    with pytest.raises(DataWallViolation, match="patient_age"):
        check_reply("evaluate", _records(metrics=MetricRecord({"patient_age": 54.0})), SHAPES, set())
    with pytest.raises(DataWallViolation, match="config record"):
        check_reply("evaluate", _records(metrics=MetricRecord({"num-examples": 1}),
                                         extra=ConfigRecord({"case_id": "busi_0001"})), SHAPES, set())
    with pytest.raises(DataWallViolation, match="bn.running_mean"):  # FedBN: the local entries never travel
        check_reply("train", _records(arrays=_arrays(**{"w": np.zeros((2, 3), np.float32),
                                                         "bn.running_mean": np.zeros(3, np.float32)}),
                                      metrics=MetricRecord({"num-examples": 5})), SHAPES, {"w"})


# ------------------------------------------------------------------ the wall inside a real simulation

def test_in_a_simulation_a_client_cannot_send_images_and_a_server_cannot_ask_for_them(tmp_path):
    """One Flower simulation (Ray): the server first asks for images, then a client whose
    train handler puts its images into the reply answers a proper round; both are refused by
    the ClientApp's data-wall mod, and the server sees only the refusals."""
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    from senolab.federated.apps import data_wall
    from senolab.federated.simulation import backend_config, plan_federation
    from senolab.federated.site import read_site, write_site
    from senolab.engine.data import load_cohorts
    from senolab.runners.study import pair_data

    config = StudyConfig.model_validate(TINY)
    data = pair_data(config, load_cohorts(config.base.data, progress=False), config.pairs[0])
    site_file = str(write_site(data, "site_a", tmp_path / "site_a"))
    federation = plan_federation(config.base, data, "fedavg", {}, ["site_a"], tmp_path / "server")
    initial = torch.load(tmp_path / "server" / "initial.pt", weights_only=True)["shared"]
    client = ClientApp(mods=[data_wall([site_file])])

    @client.train()
    def leaky(message, context):
        images = torch.stack([torch.as_tensor(x) for x, _ in read_site(site_file)[1].cohort.arrays.values()])
        arrays = {**message.content["arrays"].to_torch_state_dict(), "image": images.float()}
        return Message(RecordDict({"arrays": ArrayRecord(arrays), "metrics": MetricRecord({"num-examples": 1})}),
                       reply_to=message)

    refusals = []
    server = ServerApp()

    @server.main()
    def main(grid, context):
        while not list(grid.get_node_ids()):  # the simulated SuperNode registers after the ServerApp starts
            time.sleep(0.1)
        node = next(iter(grid.get_node_ids()))
        plan = json.dumps(federation.plan)
        asks = [({"config": ConfigRecord({"plan": plan, "server-round": 1, "send-images": 1})}, "train"),
                ({"arrays": ArrayRecord(initial), "config": ConfigRecord({"plan": plan, "server-round": 1})}, "train")]
        for content, action in asks:
            reply = next(iter(grid.send_and_receive([Message(RecordDict(content), dst_node_id=node,
                                                             message_type=action)])))
            refusals.append(reply.error.reason if reply.has_error() else "no refusal")

    run_simulation(server_app=server, client_app=client, num_supernodes=1, backend_config=backend_config(1))
    assert len(refusals) == 2
    assert "data wall" in refusals[0] and "send-images" in refusals[0]
    assert "data wall" in refusals[1] and "'image'" in refusals[1]


# ------------------------------------------------------------------ a study: killed, resumed by the CLI

class _Killed(RuntimeError):
    pass


def test_a_federated_study_is_tracked_per_round_and_resumes_after_a_kill(tmp_path):
    """fedbn is killed after its first round (as a stopped machine would be); `senolab study`
    on the same folder resumes it from that round (last.pt), then evaluates fedbn with the
    clients' averaged BatchNorm and fedbn_adabn with the target's (reusing fedbn's model)
    beside pooled erm, every round in history.csv and MLflow."""
    from senolab.runners.study import run_study
    from senolab.tracking.rundir import RunDir

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "out"
    config = StudyConfig.model_validate(TINY)

    class KillingRun(RunDir):
        def live(self, unit, *, tags=None):
            live = super().live(unit, tags=tags)
            if "fedbn" in unit:
                original = live.on_epoch_end

                def stop_after_first_round(trainer, row):
                    original(trainer, row)
                    raise _Killed("killed after round 1")

                live.on_epoch_end = stop_after_first_round
            return live

    out.mkdir()
    run = KillingRun.create(out, config.name, config.model_dump())
    with pytest.raises(Exception, match="killed after round 1"):
        run_study(config, out, progress=False, run=run)
    unit = out / "runs" / "site_c" / "fedbn" / "seed0"
    first = pd.read_csv(unit / "history.csv")
    assert list(first["epoch"]) == [0] and (unit / "last.pt").exists()

    done = subprocess.run([sys.executable, "-m", "senolab.cli", "study", "study.yaml", "--out", "out", "--quiet"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    history = pd.read_csv(unit / "history.csv")
    assert list(history["epoch"]) == [0, 1]
    assert history["time_ms"].iloc[0] == first["time_ms"].iloc[0]  # round 1 kept, not redone
    assert {"loss", "val_auc", "val_score", "bytes_sent", "bytes_received", "clients",
            "site_a.loss", "site_b.loss", "site_a.val_auc", "site_b.val_score"} <= set(history.columns)
    assert (history["bytes_sent"] > 0).all() and (history["bytes_received"] > 0).all()
    assert not (unit / "clients").exists() and not (unit / "last.pt").exists()  # site copies and resume state spent

    results = pd.read_csv(out / "results.csv").set_index("method")
    assert set(results.index) == {"erm", "fedbn", "fedbn_adabn"}
    assert results["transductive"].to_dict() == {"erm": False, "fedbn": False, "fedbn_adabn": True}
    assert results.loc[["fedbn", "fedbn_adabn"], "auc_p_vs_erm"].between(0, 1).all()
    assert results.loc["fedbn", "best_epoch"] == results.loc["fedbn_adabn", "best_epoch"]
    cases = pd.read_parquet(unit / "predictions.parquet")
    assert set(cases.loc[cases["domain"] == "source", "site"]) <= {"site_a", "site_b"}  # in-site, per client site
    # FedBN's two BatchNorm choices differ only in the target's statistics
    assert not np.allclose(cases.loc[cases["domain"] == "target", "score"].to_numpy(),
                           pd.read_parquet(out / "runs" / "site_c" / "fedbn_adabn" / "seed0" / "predictions.parquet")
                           .query("domain == 'target'")["score"].to_numpy())

    manifest = json.loads((out / "runs.json").read_text())
    logged = {r["tags"]["senolab.unit"]: r for r in manifest["runs"]}
    assert logged["site_c/fedbn/seed0"]["history"].endswith("history.csv")
    from senolab.tracking.mirror import MlflowMirror

    mirror = MlflowMirror.for_run_dir(out, config.name, None)
    run_id = mirror.find(logged["site_c/fedbn/seed0"]["key"]).info.run_id
    points = mirror.client.get_metric_history(run_id, "bytes_sent")
    assert sorted(p.step for p in points) == [0, 1]  # every round in MLflow, the killed run's too
