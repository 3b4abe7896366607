"""The classifier's dense head, forward and backward, in plain NumPy.

Words used: *pre-activation* ``z = a_prev W^T + b``, *activation* ``a = sigma(z)``,
*error* ``delta = dL/dz``, *head* the layers after ``pool``: ``pool_bn``, ``fc1``,
``fc2``, ``fc2_bn`` and ``output``. Batches are rows: ``a_prev`` is
``(batch, in)``, ``W`` is ``(out, in)`` as in the derivation (Keras stores its
transpose), and the loss is the batch mean. The formulas are in docs/backprop.md.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

__all__ = [
    "ACTIVATIONS",
    "HEAD_LAYERS",
    "Activation",
    "BatchNormInference",
    "Dense",
    "DropoutMask",
    "NumpyHead",
    "cross_entropy",
    "head_from_classifier",
    "leaky_relu",
    "leaky_relu_derivative",
    "log_softmax",
    "logsumexp",
    "prelu",
    "prelu_alpha_gradient",
    "prelu_derivative",
    "relu",
    "relu_derivative",
    "sigmoid",
    "sigmoid_derivative",
    "softmax",
    "softmax_cross_entropy_gradient",
    "softmax_jacobian",
    "tanh",
    "tanh_derivative",
]

HEAD_LAYERS = (
    "pool_bn",
    "fc1",
    "fc1_dropout",
    "fc2",
    "fc2_bn",
    "fc2_dropout",
    "output",
)
LEAKY_RELU_ALPHA = 0.01
KERAS_LEAKY_RELU_ALPHA = 0.2


# Activations and their derivatives with respect to z.


def relu(z: np.ndarray, alpha: float | np.ndarray | None = None) -> np.ndarray:
    """``max(z, 0)`` elementwise."""
    return np.maximum(z, 0)


def relu_derivative(
    z: np.ndarray, alpha: float | np.ndarray | None = None
) -> np.ndarray:
    """``1[z > 0]``; the kink at 0 gets 0, as in TensorFlow."""
    return (z > 0).astype(z.dtype)


def sigmoid(z: np.ndarray, alpha: float | np.ndarray | None = None) -> np.ndarray:
    """``1 / (1 + exp(-z))``, never overflowing for large ``|z|``."""
    # exp of a non-positive number only: exp(-|z|) lies in (0, 1].
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


def sigmoid_derivative(
    z: np.ndarray, alpha: float | np.ndarray | None = None
) -> np.ndarray:
    """``s (1 - s)`` with ``s = sigmoid(z)``; at most 0.25, reached at 0."""
    s = sigmoid(z)
    return s * (1 - s)


def tanh(z: np.ndarray, alpha: float | np.ndarray | None = None) -> np.ndarray:
    """The hyperbolic tangent."""
    return np.tanh(z)


def tanh_derivative(
    z: np.ndarray, alpha: float | np.ndarray | None = None
) -> np.ndarray:
    """``1 - tanh(z)^2``."""
    return 1 - np.tanh(z) ** 2


def leaky_relu(z: np.ndarray, alpha: float | np.ndarray | None = None) -> np.ndarray:
    """``z`` where positive, ``alpha z`` elsewhere; ``alpha`` 0.01 by default."""
    alpha = LEAKY_RELU_ALPHA if alpha is None else alpha
    return np.where(z > 0, z, alpha * z)


def leaky_relu_derivative(
    z: np.ndarray, alpha: float | np.ndarray | None = None
) -> np.ndarray:
    """1 where ``z > 0``, ``alpha`` elsewhere."""
    alpha = LEAKY_RELU_ALPHA if alpha is None else alpha
    return np.where(z > 0, 1.0, alpha).astype(z.dtype)


def prelu(z: np.ndarray, alpha: float | np.ndarray | None = None) -> np.ndarray:
    """Leaky ReLU whose slope ``alpha`` (one per unit, ``(units,)``) is learnt."""
    return leaky_relu(z, _check_alpha(alpha))


def prelu_derivative(
    z: np.ndarray, alpha: float | np.ndarray | None = None
) -> np.ndarray:
    """``df/dz``: 1 where ``z > 0``, ``alpha`` elsewhere."""
    return leaky_relu_derivative(z, _check_alpha(alpha))


def prelu_alpha_gradient(
    z: np.ndarray, grad_output: np.ndarray, alpha_shape: tuple[int, ...] = ()
) -> np.ndarray:
    """``dL/dalpha``: the sum over negative ``z`` of ``dL/df * z``.

    Args:
        z: pre-activations, shape ``(batch, units)``.
        grad_output: ``dL/df`` for the PReLU output, same shape.
        alpha_shape: ``()`` for one shared slope, ``(units,)`` for one per unit.

    Returns:
        The gradient, shape ``alpha_shape``.
    """
    per_entry = np.where(z > 0, 0.0, grad_output * z)
    return per_entry.sum(axis=0) if alpha_shape else per_entry.sum()


def _check_alpha(alpha: float | np.ndarray | None) -> float | np.ndarray:
    if alpha is None:
        raise ValueError(
            "prelu needs its slope alpha (a float or one per unit); received None."
        )
    return alpha


@dataclasses.dataclass(frozen=True)
class Activation:
    """An activation ``f(z, alpha)`` and its derivative ``f'(z, alpha)``."""

    function: Callable[..., np.ndarray]
    derivative: Callable[..., np.ndarray]


ACTIVATIONS: dict[str, Activation] = {
    "linear": Activation(
        lambda z, alpha=None: z, lambda z, alpha=None: np.ones_like(z)
    ),
    "relu": Activation(relu, relu_derivative),
    "sigmoid": Activation(sigmoid, sigmoid_derivative),
    "tanh": Activation(tanh, tanh_derivative),
    "leaky_relu": Activation(leaky_relu, leaky_relu_derivative),
    "prelu": Activation(prelu, prelu_derivative),
}


# Softmax, log-sum-exp and the cross-entropy loss.


def logsumexp(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """``log(sum(exp(z)))`` along ``axis``, computed as ``m + log(sum(exp(z - m)))``.

    Subtracting the maximum ``m`` keeps every exponent at most 0, so logits
    around 1000 neither overflow nor lose their differences.
    """
    m = np.max(z, axis=axis, keepdims=True)
    return np.squeeze(m, axis=axis) + np.log(np.sum(np.exp(z - m), axis=axis))


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """``exp(z_i) / sum_j exp(z_j)`` along ``axis``, shifted by the maximum."""
    e = np.exp(z - np.max(z, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def log_softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """``z - logsumexp(z)``: log-probabilities without taking ``log`` of 0."""
    return z - np.expand_dims(logsumexp(z, axis=axis), axis)


def softmax_jacobian(p: np.ndarray) -> np.ndarray:
    """``dp_i/dz_j = p_i (delta_ij - p_j)`` for probabilities ``p``.

    Args:
        p: probabilities, shape ``(classes,)`` or ``(batch, classes)``.

    Returns:
        Shape ``(classes, classes)`` or ``(batch, classes, classes)``.
    """
    identity = np.eye(p.shape[-1], dtype=p.dtype)
    return p[..., :, None] * (identity - p[..., None, :])


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean categorical cross-entropy ``-sum_i y_i log softmax(z)_i``.

    Args:
        logits: ``(batch, classes)``.
        labels: one-hot (or any probability) rows, ``(batch, classes)``.
    """
    return float(-np.mean(np.sum(labels * log_softmax(logits), axis=-1)))


def softmax_cross_entropy_gradient(
    logits: np.ndarray, labels: np.ndarray
) -> np.ndarray:
    """``dL/dz = (p - y) / B`` for the batch-mean loss of `cross_entropy`.

    Args:
        logits: ``(batch, classes)``.
        labels: ``(batch, classes)``, rows summing to 1.

    Returns:
        ``(batch, classes)``.
    """
    return (softmax(logits) - labels) / logits.shape[0]


# Layers. Each caches what its backward pass needs during `forward`.


class Dense:
    """``a = sigma(a_prev W^T + b)`` with parameters ``W`` ``(out, in)``, ``b``.

    Args:
        name: the layer's name, as in the Keras model.
        W: weights, shape ``(out, in)``.
        b: biases, shape ``(out,)``.
        activation: a key of `ACTIVATIONS`; ``"linear"`` by default.
        alpha: the slope of ``leaky_relu`` (a float) or ``prelu`` (a float or
            ``(out,)``, then a learnt parameter).
    """

    def __init__(
        self,
        name: str,
        W: np.ndarray,
        b: np.ndarray,
        activation: str = "linear",
        alpha: float | np.ndarray | None = None,
    ):
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"Unknown activation {activation!r} for layer {name!r}; expected "
                f"one of {sorted(ACTIVATIONS)}."
            )
        self.name = name
        self.activation = activation
        self.params = {"W": np.asarray(W), "b": np.asarray(b)}
        if activation == "prelu":
            alpha = np.asarray(_check_alpha(alpha), dtype=self.params["W"].dtype)
            self.params["alpha"] = alpha
        self.alpha = alpha
        self.grads: dict[str, np.ndarray] = {}

    def _slope(self) -> float | np.ndarray | None:
        return self.params.get("alpha", self.alpha)

    def forward(self, a_prev: np.ndarray) -> np.ndarray:
        """``(batch, in)`` to ``(batch, out)``."""
        self.a_prev = a_prev
        self.z = a_prev @ self.params["W"].T + self.params["b"]
        return ACTIVATIONS[self.activation].function(self.z, self._slope())

    def backward(self, grad_a: np.ndarray) -> np.ndarray:
        """Takes ``dL/da`` ``(batch, out)``; returns ``dL/da_prev`` ``(batch, in)``.

        The layer below turns the returned ``W^T delta`` into its own
        ``delta_prev`` by multiplying with its ``sigma'(z_prev)``.
        """
        sigma_prime = ACTIVATIONS[self.activation].derivative(self.z, self._slope())
        delta = grad_a * sigma_prime
        grad_W = delta.T @ self.a_prev
        grad_b = delta.sum(axis=0)
        W_T_delta = delta @ self.params["W"]

        self.delta = delta
        self.grads = {"W": grad_W, "b": grad_b}
        if "alpha" in self.params:
            self.grads["alpha"] = prelu_alpha_gradient(
                self.z, grad_a, self.params["alpha"].shape
            )
        return W_T_delta


class BatchNormInference:
    """BatchNorm with frozen statistics: ``y = x * scale + shift``.

    ``scale = gamma / sqrt(var + eps)`` and ``shift = beta - mean * scale``;
    ``gamma`` and ``beta`` are the parameters, ``mean`` and ``var`` constants.

    Args:
        name: the layer's name.
        gamma, beta, mean, var: per-feature vectors, shape ``(features,)``.
        eps: the variance offset, taken from the Keras layer.
    """

    def __init__(
        self,
        name: str,
        gamma: np.ndarray,
        beta: np.ndarray,
        mean: np.ndarray,
        var: np.ndarray,
        eps: float,
    ):
        self.name = name
        self.params = {"gamma": np.asarray(gamma), "beta": np.asarray(beta)}
        self.mean, self.var, self.eps = np.asarray(mean), np.asarray(var), float(eps)
        self.grads: dict[str, np.ndarray] = {}

    def forward(self, x: np.ndarray) -> np.ndarray:
        """``(batch, features)`` to the same shape."""
        self.x_hat = (x - self.mean) / np.sqrt(self.var + self.eps)
        scale = self.params["gamma"] / np.sqrt(self.var + self.eps)
        shift = self.params["beta"] - self.mean * scale
        return x * scale + shift

    def backward(self, grad_y: np.ndarray) -> np.ndarray:
        """Takes ``dL/dy``; returns ``dL/dx = dL/dy * scale``."""
        scale = self.params["gamma"] / np.sqrt(self.var + self.eps)
        self.grads = {
            "gamma": (grad_y * self.x_hat).sum(axis=0),
            "beta": grad_y.sum(axis=0),
        }
        return grad_y * scale


class DropoutMask:
    """Dropout as a fixed mask: ``y = x * mask``; no mask means switched off.

    Args:
        name: the layer's name.
        mask: ``(batch, features)`` of 0 and ``1 / (1 - rate)``, or ``None``.
    """

    def __init__(self, name: str, mask: np.ndarray | None = None):
        self.name = name
        self.mask = mask
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}

    def forward(self, x: np.ndarray) -> np.ndarray:
        return x if self.mask is None else x * self.mask

    def backward(self, grad_y: np.ndarray) -> np.ndarray:
        return grad_y if self.mask is None else grad_y * self.mask


Layer = Dense | BatchNormInference | DropoutMask


class NumpyHead:
    """A stack of layers ending in logits, trained by softmax cross-entropy.

    Args:
        layers: the layers in forward order; the last one outputs logits.

    Example:

    >>> head = NumpyHead([Dense("output", np.eye(2), np.zeros(2))])
    >>> round(head.loss(np.array([[0.0, 0.0]]), np.array([[1.0, 0.0]])), 4)
    0.6931
    """

    def __init__(self, layers: Sequence[Layer]):
        names = [layer.name for layer in layers]
        if len(set(names)) != len(names):
            raise ValueError(f"Layer names must be unique; received {names}.")
        self.layers = list(layers)

    def forward(self, features: np.ndarray, start: int = 0) -> np.ndarray:
        """Logits ``(batch, classes)`` for features ``(batch, features)``.

        Args:
            features: the head's input.
            start: the first layer to run. The layers below it keep their
                outputs from the previous pass, which must have seen the same
                ``features``; gradient checking perturbs one layer at a time.
        """
        if start == 0:
            self.outputs = [features]
        del self.outputs[start + 1 :]
        a = self.outputs[start]
        for layer in self.layers[start:]:
            a = layer.forward(a)
            self.outputs.append(a)
        return a

    def loss(self, features: np.ndarray, labels: np.ndarray, start: int = 0) -> float:
        """The batch's mean cross-entropy; labels one-hot ``(batch, classes)``.

        ``start`` is passed to `forward`.
        """
        return cross_entropy(self.forward(features, start), labels)

    def gradients(
        self, features: np.ndarray, labels: np.ndarray
    ) -> dict[tuple[str, str], np.ndarray]:
        """Every parameter's ``dL/dtheta`` by one forward and one backward pass.

        Returns:
            ``{(layer name, parameter name): gradient}``, each shaped like its
            parameter.
        """
        logits = self.forward(features)
        grad = softmax_cross_entropy_gradient(logits, labels)
        for layer in reversed(self.layers):
            grad = layer.backward(grad)
        return {
            (layer.name, key): value
            for layer in self.layers
            for key, value in layer.grads.items()
        }

    def layer_index(self, name: str) -> int:
        """The position of the layer called ``name``."""
        for k, layer in enumerate(self.layers):
            if layer.name == name:
                return k
        raise ValueError(
            f"No layer {name!r} in the head; it has {[x.name for x in self.layers]}."
        )

    def parameters(self) -> dict[tuple[str, str], np.ndarray]:
        """The parameter arrays themselves, keyed like `gradients`."""
        return {
            (layer.name, key): value
            for layer in self.layers
            for key, value in layer.params.items()
        }

    def kink_pattern(self) -> np.ndarray:
        """Which side of 0 each piecewise-linear pre-activation fell in the last pass.

        Central differences are meaningless across a kink; comparing this
        pattern at ``theta + eps`` and ``theta - eps`` detects a crossing.
        """
        signs = [
            (layer.z > 0).ravel()
            for layer in self.layers
            if isinstance(layer, Dense)
            and layer.activation in ("relu", "leaky_relu", "prelu")
        ]
        return np.concatenate(signs) if signs else np.zeros(0, bool)

    def astype(self, dtype: np.dtype | type) -> NumpyHead:
        """A copy of the head with every array cast to ``dtype``."""
        return NumpyHead([_cast_layer(layer, dtype) for layer in self.layers])


def _cast_layer(layer: Layer, dtype) -> Layer:
    if isinstance(layer, Dense):
        alpha = layer.params.get("alpha", layer.alpha)
        return Dense(
            layer.name,
            layer.params["W"].astype(dtype),
            layer.params["b"].astype(dtype),
            layer.activation,
            np.asarray(alpha, dtype) if isinstance(alpha, np.ndarray) else alpha,
        )
    if isinstance(layer, BatchNormInference):
        return BatchNormInference(
            layer.name,
            layer.params["gamma"].astype(dtype),
            layer.params["beta"].astype(dtype),
            layer.mean.astype(dtype),
            layer.var.astype(dtype),
            layer.eps,
        )
    mask = None if layer.mask is None else layer.mask.astype(dtype)
    return DropoutMask(layer.name, mask)


# Building the head from a trained Keras model.


def head_from_classifier(classifier, dtype: np.dtype | type = np.float64) -> NumpyHead:
    """The NumPy twin of a classifier's head, in inference mode.

    BatchNorm uses its moving statistics and the layer's own ``epsilon``;
    dropout is switched off.

    Args:
        classifier: a `NeuropathologyClassifier` or its ``keras.Model``.
        dtype: the dtype of every array; float64 by default.

    Returns:
        The `NumpyHead` with layers named as in the Keras model.
    """
    model = getattr(classifier, "model", classifier)
    layers = []
    for name in HEAD_LAYERS:
        layer = _get_layer(model, name)
        kind = type(layer).__name__
        if kind == "BatchNormalization":
            layers.append(_batchnorm_from_keras(layer, dtype))
        elif kind == "Dense":
            layers.append(_dense_from_keras(layer, dtype, is_output=name == "output"))
        elif kind == "Dropout":
            layers.append(DropoutMask(name))
        else:
            raise ValueError(
                f"Head layer {name!r} is a {kind}; expected BatchNormalization, "
                "Dense or Dropout."
            )
    return NumpyHead(layers)


def _get_layer(model, name: str):
    try:
        return model.get_layer(name)
    except ValueError as err:
        raise ValueError(
            f"The model has no layer {name!r}; a neuropath classifier's head has "
            f"{list(HEAD_LAYERS)}."
        ) from err


def _weight(variable, dtype) -> np.ndarray:
    return np.asarray(variable.numpy(), dtype=dtype)


def _batchnorm_from_keras(layer, dtype) -> BatchNormInference:
    if not (layer.scale and layer.center):
        # Limitation: a BatchNorm without gamma or beta would need those
        # entries dropped from the parameters; the classifier never builds one.
        raise ValueError(
            f"BatchNorm layer {layer.name!r} has scale={layer.scale}, "
            f"center={layer.center}; only scale=True, center=True is supported."
        )
    return BatchNormInference(
        layer.name,
        _weight(layer.gamma, dtype),
        _weight(layer.beta, dtype),
        _weight(layer.moving_mean, dtype),
        _weight(layer.moving_variance, dtype),
        layer.epsilon,
    )


def _dense_from_keras(layer, dtype, is_output: bool) -> Dense:
    activation = layer.activation.__name__
    if is_output:
        if activation != "softmax":
            raise ValueError(
                f"Output layer {layer.name!r} uses {activation!r}; expected "
                "'softmax', which the loss fuses with cross-entropy."
            )
        activation = "linear"
    elif activation not in ACTIVATIONS or activation == "prelu":
        raise ValueError(
            f"Layer {layer.name!r} uses activation {activation!r}; expected one of "
            f"{sorted(set(ACTIVATIONS) - {'prelu'})}."
        )
    # Keras' kernel is (in, out); the derivation's W is (out, in).
    W = _weight(layer.kernel, dtype).T.copy()
    # Keras' "leaky_relu" activation string means a slope of 0.2, not 0.01.
    alpha = KERAS_LEAKY_RELU_ALPHA if activation == "leaky_relu" else None
    return Dense(layer.name, W, _weight(layer.bias, dtype), activation, alpha)
