"""Image classifiers for unlearning experiments, in the timm convention (DESIGN decision 7).

Every model has ``forward_features(x)`` (pooled penultimate features, ``(B, num_features)``),
``forward_head(f)`` (logits), ``forward(x) == forward_head(forward_features(x))``, the attributes
``num_features``, ``num_classes``, ``in_chans``, ``first_layer()`` (what the NoT baseline negates)
and ``get_classifier()``; see :class:`ImageClassifier`.

* :func:`build` by name (:data:`MODELS`, :func:`available`), recording ``model.build_args``;
  :func:`rebuild` and :func:`model_config` for checkpoints; :func:`check_compatible` to test a
  checkpoint against a model.
* :func:`forward_flops`: FLOPs of one forward pass of one image (the paper's cost unit).
"""

from coun_fast.models.base import ImageClassifier
from coun_fast.models.compat import check_compatible
from coun_fast.models.flops import clear_flops_cache, forward_flops
from coun_fast.models.registry import MODELS, available, build, model_class, model_config, rebuild
from coun_fast.models.resnet import ResNet18
from coun_fast.models.small_cnn import SmallCNN
from coun_fast.models.vgg import VGG16BN
from coun_fast.models.vit import SmallDataViT

__all__ = [
    "ImageClassifier", "ResNet18", "VGG16BN", "SmallDataViT", "SmallCNN",
    "MODELS", "available", "build", "rebuild", "model_config", "model_class", "check_compatible",
    "forward_flops", "clear_flops_cache",
]
