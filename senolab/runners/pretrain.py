"""`senolab pretrain` and a study's pretraining step: an encoder pretrained on unlabelled images.

The output folder (``--out``, or a study's ``pretrain/<target>/seed<k>/``) holds::

    encoder.safetensors   the backbone's weights by timm's own names (what
                          ``encoder_options.pretrained: PATH`` loads; plain timm loads it too)
    history.csv           per epoch: loss, lr, images/s, CPU seconds so far, and every
                          few epochs the k-NN monitor (knn_acc, knn_auc) on the val part
    pretrain.json         what was pretrained on what: encoder, method, options, pooled
                          parts and image count, transductive or not, cost in CPU-minutes
    done.json             written last: a second run does no work
    last.pt               while it runs: resumes a stopped run (removed when done)

plus, for the command, the run folder's config.yaml, runs.json and MLflow store (one child
run, ``pretrain``, with its epochs live). Pretraining reads the images of the pooled parts
through :class:`senolab.pretrain.ImageOnlyDataset` (no label, mask or outcome); only the
k-NN monitor reads labels, of the validation part, which is never pooled.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from senolab.engine.config import PretrainConfig, PretrainOptions
from senolab.engine.data import PreparedData, prepare
from senolab.paths import writable_folder
from senolab.pretrain import ImageOnlyDataset, KnnMonitor, Pretrainer
from senolab.tracking import RunDir, table_fingerprint
from senolab.tracking.runfolder import claim_folder, done_record, mark_done

WEIGHTS = "encoder.safetensors"
RECORD = "pretrain.json"
UNIT = "pretrain"
POOLS = {"train": ["train"], "train+test": ["train", "test"]}  # PretrainConfig.pool -> the parts pooled


def pretrain_command(config: PretrainConfig, out_dir: str | Path, progress: bool = True,
                     tracking_uri: str | None = None) -> dict:
    """`senolab pretrain`: pretrain, write the folder, track it; a finished folder is
    reported again without work. Returns the pretrain.json record."""
    out = writable_folder(Path(out_dir).absolute(), "pretrain folder")
    claim_folder(out, config.model_dump(), command="senolab pretrain")
    done = done_record(out)
    if done is not None:
        print(f"{out} is done already (done.json): nothing to do")
        return done
    data = prepare(config.data, progress=progress)
    run = RunDir.open_or_create(out, config.name, config.model_dump(), tracking_uri=tracking_uri,
                                data_fingerprint=table_fingerprint(data.cohort.table), command="pretrain")
    tags = {"method": config.pretrain.method, "encoder": _encoder_label(config.model.encoder, config.model.encoder_options),
            "transductive": str(config.pool == "train+test").lower()}
    live = run.live(UNIT, tags=tags)
    record = pretrain_encoder(config.model.encoder, config.model.encoder_options, config.pretrain, data,
                              POOLS[config.pool], out, progress=progress, callbacks=[live])
    if not run.is_logged(UNIT):
        run.log_unit(UNIT, metrics=record_metrics(record), tags=tags, start_ms=live.start_ms, folder=out,
                     files=[out / WEIGHTS, out / RECORD], history=out / "history.csv",
                     params={"pretrain": config.pretrain.model_dump()})
    run.finish(echo=progress)
    return record


def pretrain_encoder(encoder: str, encoder_options: dict, options: PretrainOptions, data: PreparedData,
                     parts: list[str], out: Path, progress: bool = True, callbacks=()) -> dict:
    """Pretrain on the images of ``data``'s ``parts`` (monitor: its ``val`` part), write
    ``out``'s files and mark it done; a done folder is returned as it is."""
    done = done_record(out)
    if done is not None:
        return done
    pool_ids = [cid for part in parts for cid in data.case_ids(part)]
    pool = ImageOnlyDataset(data.cohort, pool_ids, data.image_size)
    table = data.cohort.table
    monitor = None
    if data.case_ids("val"):
        positive = data.classes.index("malignant") if "malignant" in data.classes else len(data.classes) - 1
        monitor = KnnMonitor(data.loader("val", options.batch_size, augment=False),
                             dict(zip(table["case_id"], table["patient_id"])), options.knn_k, positive)
    began = time.time()
    loop = Pretrainer(encoder, encoder_options, options, pool, out, data.image_size, monitor, callbacks)
    result = loop.fit(progress=progress)
    write_weights(out / WEIGHTS, loop.encoder_state(), {"encoder": _encoder_label(encoder, encoder_options),
                                                        "method": options.method})
    last = result.history[-1]
    record = {"weights": WEIGHTS, "encoder": encoder, "encoder_options": dict(encoder_options),
              "method": options.method, "options": options.model_dump(), "pooled_parts": parts,
              "pooled_images": len(pool), "image_size": data.image_size, "transductive": "test" in parts,
              "epochs_run": len(result.history), "final_loss": last["loss"],
              "knn_acc": _last_value(result.history, "knn_acc"), "knn_auc": _last_value(result.history, "knn_auc"),
              "cpu_minutes": last["cpu_seconds"] / 60, "wall_minutes_this_call": (time.time() - began) / 60,
              "images_per_s": last["images_per_s"]}
    (out / RECORD).write_text(json.dumps(record, indent=1, default=str) + "\n")
    mark_done(out, record)
    (out / "last.pt").unlink(missing_ok=True)
    return json.loads(json.dumps(record, default=str))


def write_weights(path: Path, state: dict, metadata: dict[str, str]) -> Path:
    """safetensors, written atomically (a run killed while writing leaves no half file)."""
    from senolab._optional import require

    save_file = require("safetensors.torch").save_file
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata={k: str(v) for k, v in metadata.items()})
    os.replace(tmp, path)
    return path


def record_metrics(record: dict) -> dict[str, float]:
    """The numbers of a pretrain.json record that MLflow logs as the unit's metrics."""
    keys = ("final_loss", "knn_acc", "knn_auc", "cpu_minutes", "images_per_s", "epochs_run", "pooled_images")
    return {k: float(record[k]) for k in keys if isinstance(record.get(k), (int, float)) and record[k] == record[k]}


def _last_value(history: list[dict], key: str):
    values = [row[key] for row in history if key in row and row[key] == row[key]]
    return values[-1] if values else None


def _encoder_label(encoder: str, options: dict) -> str:
    return f"{encoder}:{options['name']}" if "name" in options else encoder


# ----------------------------------------------------------------------------- a study's step

STUDY_FOLDER = "pretrain"  # <study>/pretrain/<target>/seed<k>/


def study_pretraining(config, data: PreparedData, target: str, seed: int, study_dir: Path, run: RunDir | None,
                      progress: bool = True) -> Path:
    """The study's pretraining for one (target, seed): the study's encoder pretrained on the
    source sites' training images (``on: sources``) or those plus the unlabelled target
    images (``sources+target``, transductive), the k-NN monitor on the source validation
    part. Done once and kept in ``<study>/pretrain/<target>/seed<k>/``; every method of
    that target and seed starts from it. Returns the weights file."""
    step = config.pretrain
    options = step.options().model_copy(update={"seed": seed})
    folder = Path(study_dir) / STUDY_FOLDER / target / f"seed{seed}"
    parts = ["train", "test"] if step.transductive else ["train"]
    name = f"{target}/pretrain/seed{seed}"
    tags = {"method": "pretrain", "target_site": target, "seed": str(seed), "pretrain": step.on,
            "transductive": str(step.transductive).lower(), "ssl_method": options.method}
    callbacks = [run.live(name, tags=tags)] if run is not None and not run.is_logged(name) else []
    # starts from the weights the study's encoder starts from (random, or e.g. `pretrained: true`)
    record = pretrain_encoder(config.base.model.encoder, dict(config.base.model.encoder_options), options, data, parts, folder,
                              progress=progress, callbacks=callbacks)
    if run is not None and not run.is_logged(name):
        run.log_unit(name, metrics=record_metrics(record), tags=tags, folder=folder,
                     files=[folder / WEIGHTS, folder / RECORD], history=folder / "history.csv",
                     start_ms=callbacks[0].start_ms if callbacks else None)
    return folder / WEIGHTS
