"""The contract every model of this package keeps, and the argument checks the models share.

An :class:`ImageClassifier` follows the timm convention (DESIGN decision 7), with one difference
stated there: ``forward_features`` already pools.

* ``forward_features(x)``: images ``(B, in_chans, H, W)`` -> pooled penultimate features
  ``(B, num_features)``; this is the ``f`` of CoUn's contrastive term (no projection head).
* ``forward_head(f)``: features ``(B, num_features)`` -> logits ``(B, num_classes)``.
* ``forward(x) == forward_head(forward_features(x))``.
* ``num_features``, ``num_classes``, ``in_chans``: ints.
* ``first_layer()``: the first module with weights (what the NoT baseline negates).
* ``get_classifier()``: the final ``nn.Linear`` (its weight has ``num_classes`` rows).
* ``build_args``: the dict :func:`coun_fast.models.build` made the model from (None otherwise).
"""

from __future__ import annotations

import numbers

from torch import Tensor, nn


def check_num_classes(value: object) -> int:
    """``num_classes`` must be an int >= 2 (a bool is not an int here)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"num_classes must be an int >= 2; got {value!r} ({type(value).__name__})")
    if value < 2:
        raise ValueError(f"num_classes must be an int >= 2; got {value}")
    return int(value)


def check_positive_int(value: object, name: str) -> int:
    """An int >= 1 (a bool is not an int here)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}")
    return int(value)


def check_probability(value: object, name: str) -> float:
    """A real number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be a real number in [0, 1); got {value!r}")
    return float(value)


def is_meta(module: nn.Module) -> bool:
    """True when ``module`` has a parameter on the meta device (built under ``torch.device("meta")``)."""
    return any(p.is_meta for p in module.parameters())


def init_conv_bn(module: nn.Module) -> None:
    """Kaiming-normal (fan_out, ReLU) conv weights, zero conv biases, BN weight 1 and bias 0.

    Does nothing for a model on the meta device (no values to set; torch's meta random init is slow).
    """
    if is_meta(module):
        return
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ImageClassifier(nn.Module):
    """Base class: ``forward`` composes ``forward_features`` and ``forward_head``; subclasses set
    ``num_classes``, ``num_features``, ``in_chans`` and implement the two halves, ``first_layer``
    and ``get_classifier``."""

    num_classes: int
    num_features: int
    in_chans: int
    build_args: dict | None = None
    min_input_size: int = 1
    """The smallest height and width the network accepts (pooling stages need room)."""

    def check_images(self, x: Tensor) -> None:
        """Raise a ValueError naming ``x`` unless it is a (B, in_chans, H, W) floating tensor with
        H, W >= ``min_input_size``."""
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor of images (B, {self.in_chans}, H, W); got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"x must be images of shape (B, {self.in_chans}, H, W) for {type(self).__name__}; "
                             f"got shape {tuple(x.shape)}")
        if x.shape[2] < self.min_input_size or x.shape[3] < self.min_input_size:
            raise ValueError(f"{type(self).__name__} needs images of at least {self.min_input_size}x{self.min_input_size}; "
                             f"got {x.shape[2]}x{x.shape[3]}")

    def forward_features(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_head(self, features: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)``: ``forward_head(forward_features(x))``."""
        return self.forward_head(self.forward_features(x))

    def first_layer(self) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def get_classifier(self) -> nn.Linear:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, num_features={self.num_features}, in_chans={self.in_chans}"


def classifier_key(model: nn.Module) -> str | None:
    """The state-dict prefix of ``model.get_classifier()`` (e.g. ``"fc"``), or None when the model
    has no such method or the module is not found."""
    get = getattr(model, "get_classifier", None)
    if get is None:
        return None
    head = get()
    for name, module in model.named_modules():
        if module is head:
            return name
    return None


__all__ = ["ImageClassifier", "check_num_classes", "check_positive_int", "check_probability", "is_meta",
           "init_conv_bn", "classifier_key"]
