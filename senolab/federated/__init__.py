"""Federated learning across institutions with Flower: each source site a client whose
cases never leave it (:mod:`senolab.federated.wall`), the server aggregating parameters
only. :func:`train_federated` trains a study unit by simulation; the same ClientApp and
ServerApp (:mod:`senolab.federated.apps`) run as a real deployment (docs/federated.md).
"""
from senolab import lazy_package

__all__ = lazy_package(__name__, exports={
    "simulation": ["train_federated", "plan_federation", "simulate"],
    "server": ["Federation", "FederationError"],
    "site": ["write_site", "read_site"],
    "wall": ["DataWallViolation", "check_instruction", "check_reply"],
})
