"""Self-supervised pretraining of image encoders on unlabelled images (``senolab pretrain``).

Registry: :data:`SSL_METHODS` (``simclr``, ``byol``, ``mae``), with lightly's heads, losses
and masking. :class:`ImageOnlyDataset` reads pixels and nothing else (no label, mask or
outcome can reach a method); :class:`UltrasoundViews` makes the augmented views (torchio
intensity, noise, blur, affine and elastic transforms, random resized crops; no colour
jitter); :class:`Pretrainer` is the loop (resumable, with a k-NN monitor on labelled
validation cases it never trains on). The command and the study step are in
:mod:`senolab.runners.pretrain`.
"""
from senolab import lazy_package

__all__ = lazy_package(__name__, exports={
    "methods": ["SSL_METHODS", "SSLMethod"],
    "data": ["IMAGE_COLUMNS", "ImageOnlyDataset"],
    "views": ["UltrasoundViews"],
    "monitor": ["KnnMonitor", "knn_metrics"],
    "loop": ["Pretrainer", "PretrainResult"],
})
