"""A backbone with the SupCon-style projection head of the CU authors' ResNet.

``build(name, num_classes, projection_dim=128)`` wraps model ``name`` as the CU authors' classifier
(Hongkyu-Lee/Contrastive-Unlearning, ``core/model/resnet.py`` ``SupConResNet``): the backbone's
pooled features h (its own classifier removed) go through the head Linear(d, d) -> ReLU ->
Linear(d, projection_dim), are L2-normalised to z, and the classifier is ReLU -> Linear(projection_dim,
num_classes) on z. Their classifier's ReLU is in place, so the feature vector their model returns
(and their contrastive loss reads) is ReLU(z), not z; here ``forward_features`` returns that same
vector ReLU(z) and ``forward_head`` is the Linear, so logits and features equal theirs. The
Original must be trained with the head (it is part of the architecture, as in their code).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from coun_fast.models.base import ImageClassifier, check_positive_int, classifier_key


def _drop_classifier(model: ImageClassifier) -> None:
    """Replace ``model.get_classifier()`` by ``nn.Identity`` (its weights would never be used)."""
    key = classifier_key(model)
    if key is None:
        raise ValueError(f"{type(model).__name__} has no classifier module to replace by the projection head")
    parent_name, _, child = key.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, nn.Identity())


class ProjectionHeadClassifier(ImageClassifier):
    """``encoder`` (an :class:`ImageClassifier`, its classifier removed) + projection head + linear
    classifier; ``forward_features(x) = ReLU(normalize(head(encoder.forward_features(x))))``, shape
    (B, projection_dim); ``forward_head(f) = fc(f)``."""

    def __init__(self, encoder: ImageClassifier, projection_dim: int = 128) -> None:
        super().__init__()
        self.projection_dim = check_positive_int(projection_dim, "projection_dim")
        self.num_classes, self.in_chans = encoder.num_classes, encoder.in_chans
        self.min_input_size = encoder.min_input_size
        width = encoder.num_features
        _drop_classifier(encoder)
        self.encoder = encoder
        self.head = nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, self.projection_dim))
        self.fc = nn.Linear(self.projection_dim, self.num_classes)
        self.num_features = self.projection_dim

    @property
    def pos_embedding(self):
        """The encoder's position embedding, when it has one (what NoT negates on a ViT)."""
        return getattr(self.encoder, "pos_embedding", None)

    def forward_features(self, x: Tensor) -> Tensor:
        return F.relu(F.normalize(self.head(self.encoder.forward_features(x)), dim=1))

    def forward_head(self, features: Tensor) -> Tensor:
        return self.fc(features)

    def first_layer(self) -> nn.Module:
        return self.encoder.first_layer()

    def get_classifier(self) -> nn.Linear:
        return self.fc


__all__ = ["ProjectionHeadClassifier"]
