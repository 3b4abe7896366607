"""The NumPy backward pass: each formula of docs/backprop.md against an
independent computation (central differences, SciPy or TensorFlow)."""

import numpy as np
import pytest
import scipy.special
import tensorflow as tf

from neuropath import backprop as bp
from neuropath.gradcheck import numeric_gradient_errors

H = 1e-6  # step of the central differences on single functions


def _numeric_derivative(function, z: np.ndarray) -> np.ndarray:
    return (function(z + H) - function(z - H)) / (2 * H)


def _numeric_gradient(loss, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of a scalar function over every entry of ``x``."""
    grad = np.zeros_like(x)
    for i in range(x.size):
        step = np.zeros_like(x)
        step.flat[i] = eps
        grad.flat[i] = (loss(x + step) - loss(x - step)) / (2 * eps)
    return grad


def _one_hot(rng, batch: int, classes: int) -> np.ndarray:
    return np.eye(classes)[rng.integers(0, classes, batch)]


def _away_from_zero(rng, shape) -> np.ndarray:
    """Random values with ``|z| >= 0.05``, so no difference straddles a kink."""
    z = rng.normal(size=shape)
    return z + 0.05 * np.sign(z)


@pytest.fixture
def rng():
    return np.random.default_rng(7)


# Softmax and cross-entropy.


def test_softmax_jacobian_is_p_i_times_kronecker_minus_p_j(rng):
    z = rng.normal(size=6)
    p = bp.softmax(z)
    numeric = np.column_stack(
        [_numeric_gradient(lambda v, i=i: bp.softmax(v)[i], z) for i in range(6)]
    ).T
    jacobian = bp.softmax_jacobian(p)

    np.testing.assert_allclose(jacobian, numeric, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(jacobian, np.diag(p) - np.outer(p, p), atol=1e-15)
    # Probabilities sum to one whatever z is, so every column sums to zero.
    np.testing.assert_allclose(jacobian.sum(axis=0), 0, atol=1e-15)


def test_fused_gradient_is_p_minus_y_over_batch(rng):
    logits = rng.normal(size=(4, 5)) * 3
    labels = _one_hot(rng, 4, 5)
    fused = bp.softmax_cross_entropy_gradient(logits, labels)
    numeric = _numeric_gradient(lambda z: bp.cross_entropy(z, labels), logits)

    np.testing.assert_allclose(fused, numeric, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(fused, (bp.softmax(logits) - labels) / 4)


def test_fused_gradient_equals_jacobian_times_gradient_of_log(rng):
    logits = rng.normal(size=(3, 4))
    labels = _one_hot(rng, 3, 4)
    p = bp.softmax(logits)
    # Chain rule by hand: dL/dz = J^T dL/dp with dL/dp = -y / (B p).
    by_chain = np.einsum("bij,bi->bj", bp.softmax_jacobian(p), -labels / (3 * p))

    np.testing.assert_allclose(
        bp.softmax_cross_entropy_gradient(logits, labels), by_chain, atol=1e-15
    )


def test_stable_softmax_handles_logits_around_1000(rng):
    logits = 1000 + rng.normal(size=(3, 8))
    with np.errstate(over="ignore", invalid="ignore"):
        naive = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert np.isnan(naive).all()

    p = bp.softmax(logits)
    shifted = np.exp(logits - 1000)
    expected = shifted / shifted.sum(axis=1, keepdims=True)

    assert np.isfinite(p).all()
    np.testing.assert_allclose(p, expected, rtol=1e-12)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-15)
    assert np.isfinite(bp.softmax(logits.astype(np.float32))).all()


def test_logsumexp_matches_scipy_and_the_shifted_formula(rng):
    small = rng.normal(size=(4, 7))
    large = small + 1000

    np.testing.assert_allclose(bp.logsumexp(small), np.log(np.exp(small).sum(axis=1)))
    np.testing.assert_allclose(
        bp.logsumexp(large), 1000 + np.log(np.exp(small).sum(axis=1)), rtol=1e-15
    )
    np.testing.assert_allclose(
        bp.logsumexp(large), scipy.special.logsumexp(large, axis=1), rtol=1e-15
    )
    np.testing.assert_allclose(bp.log_softmax(large), np.log(bp.softmax(small)))


def test_cross_entropy_matches_tensorflow(rng):
    logits = rng.normal(size=(5, 6)) * 4
    labels = _one_hot(rng, 5, 6)
    expected = tf.reduce_mean(
        tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    )

    assert bp.cross_entropy(logits, labels) == pytest.approx(float(expected), 1e-12)


# Activation derivatives.


ACTIVATION_CASES = [
    ("relu", None, tf.nn.relu),
    ("sigmoid", None, tf.sigmoid),
    ("tanh", None, tf.tanh),
    ("leaky_relu", 0.01, lambda z: tf.nn.leaky_relu(z, 0.01)),
    ("prelu", 0.3, lambda z: tf.nn.leaky_relu(z, 0.3)),
]


@pytest.mark.parametrize(("name", "alpha", "tf_function"), ACTIVATION_CASES)
def test_activation_derivative_matches_central_differences_and_tensorflow(
    rng, name, alpha, tf_function
):
    activation = bp.ACTIVATIONS[name]
    z = _away_from_zero(rng, 200) * 3
    derivative = activation.derivative(z, alpha)
    numeric = _numeric_derivative(lambda v: activation.function(v, alpha), z)
    z_tensor = tf.constant(z)
    with tf.GradientTape() as tape:
        tape.watch(z_tensor)
        total = tf.reduce_sum(tf_function(z_tensor))

    np.testing.assert_allclose(activation.function(z, alpha), tf_function(z_tensor))
    np.testing.assert_allclose(derivative, numeric, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(derivative, tape.gradient(total, z_tensor), atol=1e-12)


def test_derivatives_have_their_closed_forms(rng):
    z = _away_from_zero(rng, 50)
    s, t = bp.sigmoid(z), np.tanh(z)

    np.testing.assert_array_equal(bp.relu_derivative(z), (z > 0).astype(float))
    np.testing.assert_allclose(bp.sigmoid_derivative(z), s * (1 - s))
    np.testing.assert_allclose(bp.tanh_derivative(z), 1 - t**2)
    np.testing.assert_array_equal(
        bp.leaky_relu_derivative(z, 0.2), np.where(z > 0, 1.0, 0.2)
    )


def test_sigmoid_derivative_peaks_at_a_quarter_at_zero():
    z = np.linspace(-10, 10, 20001)
    derivative = bp.sigmoid_derivative(z)

    assert bp.sigmoid_derivative(np.zeros(1))[0] == 0.25
    assert z[np.argmax(derivative)] == pytest.approx(0.0, abs=1e-12)
    assert derivative.max() == 0.25
    assert derivative[np.abs(z) > 0.01].max() < 0.25


def test_sigmoid_stack_scales_backward_signal_by_at_most_quarter_to_the_k(rng):
    k, width = 6, 10
    layers = [
        bp.Dense(
            f"fc{i}", rng.normal(size=(width, width)), rng.normal(size=width), "sigmoid"
        )
        for i in range(k)
    ]
    a = rng.normal(size=(3, width))
    for layer in layers:
        a = layer.forward(a)
    upstream = rng.normal(size=(3, width))
    grad = upstream
    for layer in reversed(layers):
        grad = layer.backward(grad)

    weight_norms = np.prod([np.linalg.norm(x.params["W"], 2) for x in layers])
    bound = 0.25**k * weight_norms * np.linalg.norm(upstream, axis=1)
    shrink = np.linalg.norm(grad, axis=1)
    assert (shrink <= bound).all()
    assert (shrink > 0).all()
    # Far below the bound too: sigmoid' is 0.25 only at exactly z = 0.
    assert (shrink < 0.5 * bound).all()


def test_sigmoid_is_finite_for_huge_inputs():
    z = np.array([-1000.0, -50.0, 0.0, 50.0, 1000.0])
    with np.errstate(over="raise"):
        s = bp.sigmoid(z)

    np.testing.assert_allclose(s, [0.0, np.exp(-50) / (1 + np.exp(-50)), 0.5, 1.0, 1.0])


def test_prelu_alpha_gradient_is_sum_over_negative_z_of_upstream_times_z(rng):
    z = _away_from_zero(rng, (5, 4))
    upstream = rng.normal(size=(5, 4))
    alpha = np.array([0.1, 0.2, 0.3, 0.4])

    def loss(slopes):
        return float(np.sum(upstream * bp.prelu(z, slopes)))

    expected = np.where(z < 0, upstream * z, 0).sum(axis=0)
    per_unit = bp.prelu_alpha_gradient(z, upstream, alpha.shape)
    shared = bp.prelu_alpha_gradient(z, upstream)

    np.testing.assert_allclose(per_unit, expected)
    np.testing.assert_allclose(per_unit, _numeric_gradient(loss, alpha), rtol=1e-7)
    assert shared == pytest.approx(expected.sum())
    assert shared == pytest.approx(_numeric_gradient(loss, np.array(0.25)).item())


def test_prelu_without_alpha_is_rejected():
    with pytest.raises(ValueError, match="alpha"):
        bp.prelu(np.ones(3))


# Dense layers and the whole head.


def test_dense_backward_computes_delta_grad_w_grad_b_and_delta_prev(rng):
    lower = bp.Dense("fc1", rng.normal(size=(4, 3)), rng.normal(size=4), "tanh")
    upper = bp.Dense("out", rng.normal(size=(5, 4)), rng.normal(size=5))
    head = bp.NumpyHead([lower, upper])
    x, labels = rng.normal(size=(2, 3)), _one_hot(rng, 2, 5)
    grads = head.gradients(x, labels)

    delta_out = (bp.softmax(head.outputs[-1]) - labels) / 2
    delta_prev = (delta_out @ upper.params["W"]) * bp.tanh_derivative(lower.z)
    np.testing.assert_allclose(upper.delta, delta_out)
    np.testing.assert_allclose(lower.delta, delta_prev)
    np.testing.assert_allclose(grads[("out", "W")], delta_out.T @ lower.forward(x))
    np.testing.assert_allclose(grads[("fc1", "W")], delta_prev.T @ x)
    np.testing.assert_allclose(grads[("fc1", "b")], delta_prev.sum(axis=0))


def test_batch_weight_gradient_is_mean_of_per_example_outer_products(rng):
    W, b = rng.normal(size=(3, 4)), rng.normal(size=3)
    x, labels = rng.normal(size=(6, 4)), _one_hot(rng, 6, 3)
    batch = bp.NumpyHead([bp.Dense("out", W, b)]).gradients(x, labels)

    outer = []
    for i in range(6):
        single = bp.NumpyHead([bp.Dense("out", W, b)])
        grad = single.gradients(x[i : i + 1], labels[i : i + 1])[("out", "W")]
        delta = bp.softmax(x[i] @ W.T + b) - labels[i]
        np.testing.assert_allclose(grad, np.outer(delta, x[i]))
        outer.append(grad)

    np.testing.assert_allclose(batch[("out", "W")], np.mean(outer, axis=0))


def test_batchnorm_inference_is_the_affine_map_keras_applies(rng):
    import keras

    gamma, beta = rng.normal(size=5), rng.normal(size=5)
    mean, var = rng.normal(size=5), rng.uniform(0.2, 3.0, size=5)
    x = rng.normal(size=(4, 5))
    layer = keras.layers.BatchNormalization(epsilon=0.01)
    layer.build((None, 5))
    layer.set_weights([gamma, beta, mean, var])
    numpy_bn = bp.BatchNormInference("bn", gamma, beta, mean, var, eps=0.01)

    scale = gamma / np.sqrt(var + 0.01)
    np.testing.assert_allclose(numpy_bn.forward(x), x * scale + beta - mean * scale)
    np.testing.assert_allclose(
        numpy_bn.forward(x), layer(x.astype("float32"), training=False), rtol=1e-5
    )


def _mixed_head(rng, dropout_mask):
    return bp.NumpyHead(
        [
            bp.BatchNormInference(
                "bn_in",
                rng.normal(size=6),
                rng.normal(size=6),
                rng.normal(size=6),
                rng.uniform(0.5, 2, 6),
                1e-3,
            ),
            bp.Dense("fc1", rng.normal(size=(8, 6)), rng.normal(size=8), "relu"),
            bp.DropoutMask("drop", dropout_mask),
            bp.Dense(
                "fc2", rng.normal(size=(7, 8)), rng.normal(size=7), "prelu", alpha=0.2
            ),
            bp.Dense("fc3", rng.normal(size=(5, 7)), rng.normal(size=5), "sigmoid"),
            bp.BatchNormInference(
                "bn_out",
                rng.normal(size=5),
                rng.normal(size=5),
                rng.normal(size=5),
                rng.uniform(0.5, 2, 5),
                1e-3,
            ),
            bp.Dense("out", rng.normal(size=(4, 5)), rng.normal(size=4)),
        ]
    )


def test_every_parameter_of_a_mixed_head_passes_central_differences(rng):
    mask = (rng.uniform(size=(6, 8)) > 0.5) / 0.5
    head = _mixed_head(rng, mask)
    x, labels = rng.normal(size=(6, 6)), _one_hot(rng, 6, 4)
    errors = numeric_gradient_errors(head, x, labels, eps=1e-5, max_entries=60)

    expected = {
        ("bn_in", "gamma"),
        ("bn_in", "beta"),
        ("fc1", "W"),
        ("fc1", "b"),
        ("fc2", "W"),
        ("fc2", "b"),
        ("fc2", "alpha"),
        ("fc3", "W"),
        ("fc3", "b"),
        ("bn_out", "gamma"),
        ("bn_out", "beta"),
        ("out", "W"),
        ("out", "b"),
    }
    assert set(errors) == expected
    for key, (error, entries, _) in errors.items():
        assert error < 1e-7, key
        assert entries > 0, key


def test_central_differences_catch_a_wrong_derivative(rng, monkeypatch):
    head = _mixed_head(rng, None)
    x, labels = rng.normal(size=(6, 6)), _one_hot(rng, 6, 4)
    wrong = bp.Activation(bp.sigmoid, lambda z, alpha=None: bp.sigmoid(z))
    monkeypatch.setitem(bp.ACTIVATIONS, "sigmoid", wrong)
    errors = numeric_gradient_errors(head, x, labels, max_entries=60)

    assert errors[("fc3", "W")][0] > 0.1
    assert errors[("fc1", "W")][0] > 0.1
    assert errors[("out", "W")][0] < 1e-7
    assert errors[("bn_out", "gamma")][0] < 1e-7


def test_unknown_activation_names_the_accepted_ones():
    with pytest.raises(ValueError, match=r"'swish'.*'relu'"):
        bp.Dense("fc", np.eye(2), np.zeros(2), activation="swish")
