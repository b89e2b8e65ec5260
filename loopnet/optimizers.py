"""Optimizers, as the book writes them: ``pre_update_params()`` (learning-rate decay),
``update_params(layer)`` for each trainable layer, ``post_update_params()`` (count the step).

The update itself is a loop kernel (``loopnet.kernels.optimizers``) run through ``loopnet.ops``
on the layer's device; only host-side scalars (the decayed learning rate, the iteration count)
are computed here in Python. Optimizer state lives on the layer beside its parameters, under the
book's names (``weight_momentums``, ``weight_cache``, ``bias_momentums``, ``bias_cache``), so a
saved model keeps it.

Every hyper-parameter is checked when the optimizer is built (``epsilon`` must be > 0: it keeps
the update's division finite). Defaults are the book's: SGD lr 1.0; Adagrad lr 1.0, epsilon 1e-7; RMSprop lr 0.001, epsilon
1e-7, rho 0.9; Adam lr 0.001, epsilon 1e-7, beta_1 0.9, beta_2 0.999 (PyTorch's Adam uses
epsilon 1e-8). ``decay`` gives ``lr / (1 + decay * iterations)``.
"""

from __future__ import annotations

from loopnet import ops
from loopnet.validate import number


class Optimizer:
    """What every optimizer shares: the learning rate, its decay and the iteration count."""

    #: the state arrays kept on each layer, per parameter (``weight_<name>``, ``bias_<name>``)
    state_names: tuple[str, ...] = ()

    def __init__(self, learning_rate: float, decay: float = 0.0):
        self.learning_rate = number(learning_rate, "learning_rate", minimum=0.0, strict=True)
        self.current_learning_rate = self.learning_rate
        self.decay = number(decay, "decay", minimum=0.0)
        self.iterations = 0

    def pre_update_params(self) -> None:
        """Decay the learning rate: ``lr / (1 + decay * iterations)`` (written as the book
        writes it, so the printed value is the book's to the last digit)."""
        if self.decay:
            self.current_learning_rate = self.learning_rate * (
                1.0 / (1.0 + self.decay * self.iterations))

    def post_update_params(self) -> None:
        self.iterations += 1

    def update_params(self, layer) -> None:
        """Update ``layer.weights`` and ``layer.biases`` in place from ``dweights``/``dbiases``.

        ``layer`` is any object with those four arrays (a loopnet ``Dense``, or a ``Layer_Dense``
        written as the book writes it); its ``device``, when it has one, picks where the update
        runs, else the current default device does."""
        device = getattr(layer, "device", None)
        names = self._attribute_names()
        for params, grads, attributes in ((layer.weights, layer.dweights, names[0]),
                                          (layer.biases, layer.dbiases, names[1])):
            states = [self._state(layer, attribute, params) for attribute in attributes]
            self._update(params, grads, states, device)

    def _attribute_names(self):
        """``(["weight_momentums", ...], ["bias_momentums", ...])``: the state arrays' names on
        a layer (made once: this runs for every layer at every step)."""
        names = self.__dict__.get("_names")
        if names is None or names[2] != self.state_names:
            names = self._names = ([f"weight_{name}" for name in self.state_names],
                                   [f"bias_{name}" for name in self.state_names],
                                   self.state_names)
        return names

    def _state(self, layer, attribute: str, params):
        state = getattr(layer, attribute, None)
        if state is None or state.shape != params.shape:
            state = ops.zeros(params.shape, params.dtype, device=getattr(layer, "device", None))
            setattr(layer, attribute, state)
        return state

    def _update(self, params, grads, states, device):  # pragma: no cover - overridden
        raise NotImplementedError

    def get_config(self) -> dict:
        """Hyper-parameters and counters (saved as JSON by ``Model.save``)."""
        return {"learning_rate": self.learning_rate, "decay": self.decay}

    def get_state(self) -> dict:
        return {"current_learning_rate": self.current_learning_rate,
                "iterations": self.iterations}

    def set_state(self, state: dict) -> None:
        self.current_learning_rate = float(state["current_learning_rate"])
        self.iterations = int(state["iterations"])

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with momentum (``Optimizer_SGD``)."""

    def __init__(self, learning_rate: float = 1.0, decay: float = 0.0, momentum: float = 0.0):
        super().__init__(learning_rate, decay)
        self.momentum = number(momentum, "momentum", minimum=0.0)
        self.state_names = ("momentums",) if self.momentum else ()

    def _update(self, params, grads, states, device):
        if self.momentum:
            ops.sgd_update(params, grads, learning_rate=self.current_learning_rate,
                           momentum=self.momentum, momentums=states[0], device=device)
        else:
            ops.sgd_update(params, grads, learning_rate=self.current_learning_rate, device=device)

    def get_config(self) -> dict:
        return {**super().get_config(), "momentum": self.momentum}


class Adagrad(Optimizer):
    """Per-parameter steps shrinking with the summed squared gradients (``Optimizer_Adagrad``)."""

    state_names = ("cache",)

    def __init__(self, learning_rate: float = 1.0, decay: float = 0.0, epsilon: float = 1e-7):
        super().__init__(learning_rate, decay)
        self.epsilon = number(epsilon, "epsilon", minimum=0.0, strict=True)

    def _update(self, params, grads, states, device):
        ops.adagrad_update(params, grads, states[0], learning_rate=self.current_learning_rate,
                           epsilon=self.epsilon, device=device)

    def get_config(self) -> dict:
        return {**super().get_config(), "epsilon": self.epsilon}


class RMSprop(Optimizer):
    """Adagrad with a moving-average cache (``Optimizer_RMSprop``)."""

    state_names = ("cache",)

    def __init__(self, learning_rate: float = 0.001, decay: float = 0.0, epsilon: float = 1e-7,
                 rho: float = 0.9):
        super().__init__(learning_rate, decay)
        self.epsilon = number(epsilon, "epsilon", minimum=0.0, strict=True)
        self.rho = number(rho, "rho", minimum=0.0)
        if self.rho > 1:
            raise ValueError(f"rho must be in [0, 1], got {self.rho}")

    def _update(self, params, grads, states, device):
        ops.rmsprop_update(params, grads, states[0], learning_rate=self.current_learning_rate,
                           epsilon=self.epsilon, rho=self.rho, device=device)

    def get_config(self) -> dict:
        return {**super().get_config(), "epsilon": self.epsilon, "rho": self.rho}


class Adam(Optimizer):
    """Momentum plus RMSprop with bias correction (``Optimizer_Adam``)."""

    state_names = ("momentums", "cache")

    def __init__(self, learning_rate: float = 0.001, decay: float = 0.0, epsilon: float = 1e-7,
                 beta_1: float = 0.9, beta_2: float = 0.999):
        super().__init__(learning_rate, decay)
        self.epsilon = number(epsilon, "epsilon", minimum=0.0, strict=True)
        self.beta_1 = number(beta_1, "beta_1", minimum=0.0, below=1.0)
        self.beta_2 = number(beta_2, "beta_2", minimum=0.0, below=1.0)

    def _update(self, params, grads, states, device):
        ops.adam_update(params, grads, states[0], states[1],
                        learning_rate=self.current_learning_rate, iteration=self.iterations,
                        epsilon=self.epsilon, beta_1=self.beta_1, beta_2=self.beta_2,
                        device=device)

    def get_config(self) -> dict:
        return {**super().get_config(), "epsilon": self.epsilon, "beta_1": self.beta_1,
                "beta_2": self.beta_2}


OPTIMIZERS = {cls.__name__: cls for cls in (SGD, Adagrad, RMSprop, Adam)}
