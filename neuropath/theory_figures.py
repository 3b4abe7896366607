"""Figures for docs/backprop.md, drawn from the NumPy head of `neuropath.backprop`.

Each figure is one PNG: *activations* with their derivatives, *softmax*
properties, the *cross-entropy* loss and its gradient, the *chain rule* on a
one-layer example, and the *gradient flow* of a run whose TensorBoard logs
hold per-layer gradient norms (scalar tags containing ``grad``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from neuropath import backprop as bp

__all__ = [
    "plot_activations",
    "plot_chain_rule",
    "plot_cross_entropy",
    "plot_gradient_norms",
    "plot_softmax",
    "read_gradient_logs",
    "render_figures",
]

logger = logging.getLogger(__name__)

DPI = 120
FORWARD_COLOUR = "black"
BACKWARD_COLOUR = "tab:red"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI, bbox_inches="tight")
    _pyplot().close(figure)
    return path


# Activations.


def _plot_activation(axes, name: str, function, derivative, z: np.ndarray) -> None:
    axes.plot(z, function(z), label=f"{name}(z)", linewidth=2)
    axes.plot(z, derivative(z), label=f"{name}'(z)", linestyle="--", linewidth=2)
    axes.axhline(0, color="grey", linewidth=0.5)
    axes.axvline(0, color="grey", linewidth=0.5)
    axes.set_title(name)
    axes.set_xlabel("pre-activation z")
    axes.set_ylabel("value")
    axes.legend(loc="upper left")
    axes.grid(alpha=0.3)


def plot_activations(path: str | os.PathLike) -> Path:
    """ReLU, sigmoid, tanh and leaky ReLU with their derivatives, 2 x 2 panels.

    The sigmoid panel marks the derivative's maximum, 0.25 at ``z = 0``.
    """
    plt = _pyplot()
    z = np.linspace(-5, 5, 1001)
    # A slope of 0.1 rather than 0.01 so the negative side is visible.
    slope = 0.1
    panels = [
        ("ReLU", bp.relu, bp.relu_derivative),
        ("sigmoid", bp.sigmoid, bp.sigmoid_derivative),
        ("tanh", bp.tanh, bp.tanh_derivative),
        (
            f"leaky ReLU (alpha = {slope})",
            lambda v: bp.leaky_relu(v, slope),
            lambda v: bp.leaky_relu_derivative(v, slope),
        ),
    ]
    figure, grid = plt.subplots(2, 2, figsize=(10, 7.5))
    for axes, (name, function, derivative) in zip(grid.flat, panels, strict=True):
        _plot_activation(axes, name.split(" (")[0], function, derivative, z)
        axes.set_title(name)

    sigmoid_axes = grid.flat[1]
    peak = float(bp.sigmoid_derivative(np.zeros(1))[0])
    sigmoid_axes.plot([0], [peak], "o", color="tab:red")
    sigmoid_axes.annotate(
        f"max sigmoid' = {peak:.2f} at z = 0",
        xy=(0, peak),
        xytext=(1.0, 0.45),
        arrowprops={"arrowstyle": "->", "color": "tab:red"},
        color="tab:red",
    )
    figure.suptitle("Activation functions and their derivatives")
    return _save(figure, Path(path))


# Softmax.


def plot_softmax(path: str | os.PathLike) -> Path:
    """Softmax is unchanged by adding a constant; temperature sharpens or flattens.

    Left: ``softmax(z + c)`` for ``c`` = 0, 100 and 1000 by the stable formula
    (the naive one overflows at 1000). Right: ``softmax(z / T)`` for several T.
    """
    plt = _pyplot()
    logits = np.array([2.0, 1.0, 0.1, -1.0])
    classes = np.arange(len(logits))
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))

    shifts = (0.0, 100.0, 1000.0)
    width = 0.8 / len(shifts)
    for k, shift in enumerate(shifts):
        left.bar(
            classes + (k - 1) * width,
            bp.softmax(logits + shift),
            width,
            label=f"softmax(z + {shift:g})",
        )
    with np.errstate(over="ignore", invalid="ignore"):
        naive = np.exp(logits + 1000) / np.exp(logits + 1000).sum()
    left.set_title(
        "Translation invariance (stable softmax)\n"
        f"naive exp(z + 1000) overflows: class 0 gets {naive[0]}"
    )
    _label_class_axes(left, classes, logits)

    temperatures = (0.5, 1.0, 2.0, 5.0)
    width = 0.8 / len(temperatures)
    for k, temperature in enumerate(temperatures):
        right.bar(
            classes + (k - 1.5) * width,
            bp.softmax(logits / temperature),
            width,
            label=f"T = {temperature:g}",
        )
    right.set_title("Temperature: softmax(z / T)")
    _label_class_axes(right, classes, logits)
    return _save(figure, Path(path))


def _label_class_axes(axes, classes: np.ndarray, logits: np.ndarray) -> None:
    names = [f"class {k}\nz = {v:g}" for k, v in enumerate(logits)]
    axes.set_xticks(classes, names)
    axes.set_xlabel("class (logit z)")
    axes.set_ylabel("probability")
    axes.set_ylim(0, 1)
    axes.legend()
    axes.grid(axis="y", alpha=0.3)


# Cross-entropy.


def _true_class_logits(p_true: np.ndarray, n_classes: int) -> np.ndarray:
    """Logits whose softmax gives ``p_true`` to class 0, the rest shared evenly."""
    rest = (1 - p_true) / (n_classes - 1)
    return np.log(np.column_stack([p_true] + [rest] * (n_classes - 1)))


def plot_cross_entropy(path: str | os.PathLike, n_classes: int = 17) -> Path:
    """The loss ``-log p_y`` and its gradients, against the true-class probability.

    The gradient with respect to the true class's logit, ``p_y - 1``, stays in
    [-1, 0]; the one with respect to the probability, ``-1 / p_y``, explodes.
    Both come from `backprop.cross_entropy` and its fused gradient.
    """
    plt = _pyplot()
    p_true = np.linspace(0.005, 0.999, 400)
    labels = np.zeros((1, n_classes))
    labels[0, 0] = 1.0
    logits = _true_class_logits(p_true, n_classes)
    loss = np.array([bp.cross_entropy(row[None], labels) for row in logits])
    grad_logit = np.array(
        [bp.softmax_cross_entropy_gradient(row[None], labels)[0, 0] for row in logits]
    )

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    left.plot(p_true, loss, linewidth=2)
    left.set_title("Cross-entropy L = -log p_y")
    left.set_xlabel("probability of the true class p_y")
    left.set_ylabel("loss L")
    left.grid(alpha=0.3)

    right.plot(p_true, grad_logit, linewidth=2, label="dL/dz_y = p_y - 1 (fused)")
    right.plot(
        p_true, -1 / p_true, linewidth=2, linestyle="--", label="dL/dp_y = -1/p_y"
    )
    right.set_ylim(-10, 0.5)
    right.axhline(0, color="grey", linewidth=0.5)
    right.set_title("Gradient of the loss")
    right.set_xlabel("probability of the true class p_y")
    right.set_ylabel("gradient")
    right.legend(loc="lower right")
    right.grid(alpha=0.3)
    return _save(figure, Path(path))


# The chain rule on one dense layer.


def chain_rule_example() -> dict[str, np.ndarray]:
    """A one-example forward and backward pass through dense, ReLU, softmax-CE.

    Returns:
        The values the chain-rule figure shows: ``x``, ``W``, ``b``, ``z``,
        ``a``, ``p``, ``y``, ``L`` and the gradients ``dL/da``, ``delta``,
        ``grad_W``, ``grad_b`` and ``dL/dx``.
    """
    x = np.array([[1.0, -0.5]])
    W = np.array([[0.8, -0.4], [-0.6, 0.9], [0.3, 0.5]])
    b = np.array([0.1, 0.2, 0.4])
    y = np.array([[0.0, 0.0, 1.0]])
    dense = bp.Dense("dense", W, b, activation="relu")
    head = bp.NumpyHead([dense])
    grads = head.gradients(x, y)
    grad_x = dense.delta @ W
    a = head.outputs[-1]
    return {
        "x": x[0],
        "W": W,
        "b": b,
        "z": dense.z[0],
        "a": a[0],
        "p": bp.softmax(a)[0],
        "y": y[0],
        "L": np.array(bp.cross_entropy(a, y)),
        "dL/da": bp.softmax_cross_entropy_gradient(a, y)[0],
        "delta": dense.delta[0],
        "grad_W": grads[("dense", "W")],
        "grad_b": grads[("dense", "b")],
        "dL/dx": grad_x[0],
    }


def _fmt(values: np.ndarray) -> str:
    values = np.atleast_1d(values)
    if values.ndim == 2:
        return "\n".join(_fmt(row) for row in values)
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"


def _box(axes, x: float, y: float, text: str, colour: str = "white") -> None:
    axes.text(
        x,
        y,
        text,
        ha="center",
        va="center",
        fontsize=10,
        family="monospace",
        bbox={"boxstyle": "round,pad=0.5", "facecolor": colour, "edgecolor": "0.3"},
    )


def _arrow(axes, start, end, colour: str) -> None:
    axes.annotate(
        "",
        xy=end,
        xytext=start,
        arrowprops={"arrowstyle": "-|>", "color": colour, "linewidth": 1.5},
    )


def plot_chain_rule(path: str | os.PathLike) -> Path:
    """The computational graph of `chain_rule_example` with its numbers.

    Forward values (black) sit in the nodes; backward gradients (red) sit
    under the arrows that carry them, from the loss back to the input, and
    beside the parameters they update.
    """
    plt = _pyplot()
    v = chain_rule_example()
    figure, axes = plt.subplots(figsize=(15, 4.4))
    axes.set_xlim(0, 15)
    axes.set_ylim(1.5, 5.3)
    axes.axis("off")

    row, xs = 2.6, (0.9, 4.2, 7.3, 10.3, 13.6)
    nodes = [
        f"x\n{_fmt(v['x'])}",
        f"z = W x + b\n{_fmt(v['z'])}",
        f"a = ReLU(z)\n{_fmt(v['a'])}",
        f"p = softmax(a)\n{_fmt(v['p'])}",
        f"L = -sum y log p\n{float(v['L']):.3g}",
    ]
    for x, text in zip(xs, nodes, strict=True):
        _box(axes, x, row, text)
    for left, right in zip(xs[:-1], xs[1:], strict=True):
        _arrow(axes, (left + 1.15, row + 0.12), (right - 1.15, row + 0.12), "black")
        _arrow(axes, (right - 1.15, row - 0.12), (left + 1.15, row - 0.12), "tab:red")

    backward = [
        f"dL/dx = W^T delta\n{_fmt(v['dL/dx'])}",
        f"delta = dL/da * 1[z > 0]\n{_fmt(v['delta'])}",
        f"dL/da = p - y\n{_fmt(v['dL/da'])}",
        "dL/dp = -y / p\n(fused into p - y)",
    ]
    for left, right, text in zip(xs[:-1], xs[1:], backward, strict=True):
        _note(axes, (left + right) / 2, row - 0.35, text, ha="center")

    _box(axes, 1.3, 4.6, f"W\n{_fmt(v['W'])}", "0.95")
    _note(axes, 2.1, 4.6, f"grad_W = delta x^T\n{_fmt(v['grad_W'])}", va="center")
    _box(axes, 6.4, 4.6, f"b\n{_fmt(v['b'])}", "0.95")
    _note(axes, 7.5, 4.6, f"grad_b = delta\n{_fmt(v['grad_b'])}", va="center")
    _box(axes, 13.6, 4.6, f"y (true class 2)\n{_fmt(v['y'])}", "0.95")
    _arrow(axes, (1.6, 3.95), (3.7, 3.0), "black")
    _arrow(axes, (6.1, 4.25), (4.8, 3.0), "black")
    _arrow(axes, (13.6, 4.25), (13.6, 3.0), "black")
    axes.set_title(
        "Chain rule through a dense layer, ReLU and softmax cross-entropy "
        "(forward in black, backward in red)"
    )
    return _save(figure, Path(path))


def _note(axes, x: float, y: float, text: str, ha="left", va="top") -> None:
    axes.text(
        x,
        y,
        text,
        ha=ha,
        va=va,
        color=BACKWARD_COLOUR,
        fontsize=9.5,
        family="monospace",
    )


# Gradient flow from a run's TensorBoard logs.


def read_gradient_logs(
    run_dir: str | os.PathLike,
) -> dict[str, list[tuple[int, float]]]:
    """Scalar series whose tag contains ``grad``, from a run's TensorBoard logs.

    Args:
        run_dir: a run folder; its ``logs/`` is searched recursively.

    Returns:
        ``{tag: [(step, value), ...]}`` sorted by step, in the order the tags
        first appear; empty when there are none.
    """
    from neuropath.gradient_logging import read_events

    series: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(Path(run_dir, "logs").rglob("events.out.tfevents*")):
        for event in read_events(path)[0]:
            for value in event.summary.value:
                scalar = _scalar(value)
                if "grad" in value.tag.lower() and scalar is not None:
                    series.setdefault(value.tag, []).append((event.step, scalar))
    return {tag: sorted(points) for tag, points in series.items()}


def _scalar(value) -> float | None:
    """A summary value as a float, or ``None`` for histograms and images."""
    import tensorflow as tf

    if value.HasField("simple_value"):
        return float(value.simple_value)
    if value.HasField("tensor"):
        array = tf.make_ndarray(value.tensor)
        if array.size == 1 and np.issubdtype(array.dtype, np.number):
            return float(array.ravel()[0])
    return None


def plot_gradient_norms(
    series: dict[str, list[tuple[int, float]]], path: str | os.PathLike
) -> Path:
    """Gradient norms per layer at a few steps, and over the steps.

    Args:
        series: `read_gradient_logs`' result, at least one tag.
        path: the PNG to write.
    """
    plt = _pyplot()
    tags = list(series)
    names = _short_names(tags)
    steps = sorted({step for points in series.values() for step, _ in points})
    shown = sorted({steps[int(k)] for k in np.linspace(0, len(steps) - 1, 5)})
    # A deep backbone logs hundreds of tags: cap the width, thin the labels,
    # and stack the two panels so each gets the full width.
    width = min(max(10.0, 0.12 * len(tags)), 24.0)
    figure, (left, right) = plt.subplots(2, 1, figsize=(width, 10.0))

    colours = plt.cm.viridis(np.linspace(0, 0.9, len(shown)))
    for step, colour in zip(shown, colours, strict=True):
        norms = [dict(series[tag]).get(step, np.nan) for tag in tags]
        left.plot(range(len(tags)), norms, "o-", color=colour, label=f"step {step}")
    ticks = _spread(list(range(len(tags))), 60)
    left.set_xticks(ticks, [names[k] for k in ticks], rotation=60, ha="right")
    left.tick_params(axis="x", labelsize=7)
    left.set_yscale("log")
    left.set_xlabel("layer (logged tag)")
    left.set_ylabel("gradient norm")
    left.set_title("Gradient norm per layer")
    left.legend()
    left.grid(alpha=0.3)

    for k in _spread(list(range(len(tags))), 8):
        points = np.array(series[tags[k]])
        right.plot(points[:, 0], points[:, 1], label=names[k])
    right.set_yscale("log")
    right.set_xlabel("step")
    right.set_ylabel("gradient norm")
    right.set_title("Gradient norm over training")
    right.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    right.grid(alpha=0.3)
    return _save(figure, Path(path))


def _short_names(tags: list[str]) -> list[str]:
    """The tags without the folder they all share, such as ``gradient_norm/``."""
    shared = os.path.commonprefix(tags).rpartition("/")[0]
    return [tag[len(shared) + 1 :] if shared else tag for tag in tags]


def _spread(items: list, n: int) -> list:
    """At most ``n`` items, evenly spread, first and last included."""
    if len(items) <= n:
        return items
    return [items[int(k)] for k in np.linspace(0, len(items) - 1, n)]


FIGURES: dict[str, Callable[[Path], Path]] = {
    "activations.png": plot_activations,
    "softmax.png": plot_softmax,
    "cross_entropy.png": plot_cross_entropy,
    "chain_rule.png": plot_chain_rule,
}


def render_figures(
    out_dir: str | os.PathLike, run_dir: str | os.PathLike | None = None
) -> tuple[list[Path], list[str]]:
    """Draws every figure into ``out_dir``.

    Args:
        out_dir: the folder for the PNG files; created if missing.
        run_dir: a run folder; its gradient logs, if any, give
            ``gradient_norms.png`` (the run folder's own
            ``gradient_flow.png`` is drawn by the gradient logger).

    Returns:
        ``(written, skipped)``: the files written and, for each figure left
        out, why.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [draw(out_dir / name) for name, draw in FIGURES.items()]
    skipped = []
    if run_dir is not None:
        if not Path(run_dir).is_dir():
            raise FileNotFoundError(
                f"Run folder {str(run_dir)!r} does not exist; pass a folder "
                "written by 'neuropath train' or leave out --run."
            )
        series = read_gradient_logs(run_dir)
        if series:
            written.append(plot_gradient_norms(series, out_dir / "gradient_norms.png"))
        else:
            skipped.append(
                f"gradient_norms.png: the run {str(run_dir)!r} has no gradient logs "
                "(no TensorBoard scalar tag containing 'grad')"
            )
    for path in written:
        logger.info("Wrote %s", path)
    return written, skipped
