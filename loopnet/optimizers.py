"""Optimizers, as the book writes them: ``pre_update_params()`` (learning-rate decay),
``update_params(layer)`` for each trainable layer, ``post_update_params()`` (count the step).

The update itself is a loop kernel (``loopnet.kernels.optimizers``) run through ``loopnet.ops``
on the layer's device; only host-side scalars (the decayed learning rate, the iteration count)
are computed here in Python. Optimizer state lives on the layer beside its parameters, under the
book's names (``weight_momentums``, ``weight_cache``, ``bias_momentums``, ``bias_cache``), so a
saved model keeps it.

Every hyper-parameter is checked when the optimizer is built and whenever it is assigned later
(``epsilon`` must be > 0: it keeps the update's division finite); ``optimizer.learning_rate =
x`` takes effect from the next step, with or without decay. Defaults are the book's: SGD lr
1.0; Adagrad lr 1.0, epsilon 1e-7; RMSprop lr 0.001, epsilon 1e-7, rho 0.9; Adam lr 0.001,
epsilon 1e-7, beta_1 0.9, beta_2 0.999 (PyTorch's Adam uses epsilon 1e-8). ``decay`` gives
``lr / (1 + decay * iterations)``.
"""

from __future__ import annotations

from loopnet import ops
from loopnet.validate import Checked, count, number


class _LearningRate(Checked):
    """``learning_rate``, checked when assigned. Assigned after the constructor, it also sets
    the rate the next step takes (``current_learning_rate``, decayed to the current iteration
    as ``pre_update_params`` decays it): ``optimizer.learning_rate = 0.01`` takes effect, as a
    Keras user expects, where the book's optimizer without decay would go on with the old
    rate."""

    def __set__(self, obj, value):
        super().__set__(obj, value)
        state = obj.__dict__
        if "current_learning_rate" in state:    # (not while the constructor runs)
            rate, decay = state["learning_rate"], state.get("decay", 0.0)
            state["current_learning_rate"] = (
                rate * (1.0 / (1.0 + decay * state.get("iterations", 0))) if decay else rate)


def _rho(value, name):
    return ops.rmsprop_rho(value)


def _missing(layer, error: AttributeError) -> Exception:
    """What to raise when ``update_params(layer)`` finds an array missing: a layer whose
    backward has not run yet is told so; something that is not a trainable layer gets a
    ``TypeError``; any other missing attribute is ``error`` itself."""
    missing = getattr(error, "name", None)
    if missing in ("dweights", "dbiases"):
        from loopnet.layers import not_set_yet

        return not_set_yet(layer, missing)
    if missing in ("weights", "biases") and getattr(error, "obj", None) is layer:
        return TypeError(f"update_params takes a layer with weights and biases (a Dense), got "
                         f"{layer!r}, which has no {missing}")
    return error


class Optimizer:
    """What every optimizer shares: the learning rate, its decay and the iteration count."""

    #: the state arrays kept on each layer, per parameter (``weight_<name>``, ``bias_<name>``)
    state_names: tuple[str, ...] = ()

    # Hyper-parameters and the step count are checked whenever they are assigned, so that a
    # value set by hand after the constructor (``optimizer.decay = -1``) is refused on the spot,
    # for the layered path and the compiled step alike, instead of diverging or being ignored.
    learning_rate = _LearningRate(number, minimum=0.0, strict=True)
    decay = Checked(number, minimum=0.0)
    iterations = Checked(count)

    def __init__(self, learning_rate: float, decay: float = 0.0):
        self.learning_rate = learning_rate
        self.current_learning_rate = self.learning_rate
        self.decay = decay
        self.iterations = 0

    def pre_update_params(self) -> None:
        """Decay the learning rate: ``lr / (1 + decay * iterations)`` (written as the book
        writes it, so the printed value is the book's to the last digit)."""
        if self.decay:
            self.current_learning_rate = self.learning_rate * (
                1.0 / (1.0 + self.decay * self.iterations))

    def post_update_params(self) -> None:
        # (the checked count plus one, stored past the assignment's check: every step of a
        # learner's loop comes here, and the check would cost it ~0.2 us)
        self.__dict__["iterations"] = self.iterations + 1

    def update_params(self, layer) -> None:
        """Update ``layer.weights`` and ``layer.biases`` in place from ``dweights``/``dbiases``.

        ``layer`` is any object with those four arrays (a loopnet ``Dense``, or a ``Layer_Dense``
        written as the book writes it); its ``device``, when it has one, picks where the update
        runs, else the current default device does."""
        kernel, scalars = self._kernel()
        try:
            views = self._views(layer)
        except AttributeError as error:
            raise _missing(layer, error) from None
        if views is not None:      # the arrays ops checked last time, unchanged: run the kernel
            run = getattr(views[0], kernel)
            run(*views[1], *scalars)
            run(*views[2], *scalars)
            return
        device = getattr(layer, "device", None)
        names = self._attribute_names()
        try:
            pairs = ((layer.weights, layer.dweights, names[0]),
                     (layer.biases, layer.dbiases, names[1]))
        except AttributeError as error:
            raise _missing(layer, error) from None
        for params, grads, attributes in pairs:
            states = [self._state(layer, attribute, params) for attribute in attributes]
            ops.optimizer_update(kernel, params, grads, states, scalars,
                                 names=self.state_names, device=device)

    def _attribute_names(self):
        """``(["weight_momentums", ...], ["bias_momentums", ...], state_names, all of them)``:
        the state arrays' names on a layer (made once: this runs for every layer at every
        step)."""
        names = self.__dict__.get("_names")
        if names is None or names[2] != self.state_names:
            weights = [f"weight_{name}" for name in self.state_names]
            biases = [f"bias_{name}" for name in self.state_names]
            names = self._names = (weights, biases, self.state_names, tuple(weights + biases))
        return names

    # The learner's loop calls ``update_params`` for every layer at every step, and checking
    # its arrays through ``loopnet.ops`` (types, shapes, dtypes, contiguity, writability, then
    # flat views for the kernel) cost ~5 us per array against ~0.5 us for the kernel. The views
    # of a layer's arrays that passed those checks are kept here, with the arrays themselves:
    # while the layer holds the very same array objects (updated in place, as every optimizer
    # and ``Dense.backward`` do) and they stay writable, the checks would pass again, so the
    # kernel runs at once. A new array (``set_parameters``, ``layer.to(...)``, a user's own
    # assignment) misses and takes the checked path, which then keeps its views.
    LAYER_VIEWS = 256   # layers remembered per optimizer (beyond that the cache starts over)

    def _views(self, layer):
        """``(backend, weight views, bias views)`` for ``layer`` (parameters, gradients, state:
        flat views in the kernels' argument order) when its arrays are those checked last
        time, else None (and the views are made for next time, where a host backend runs
        them)."""
        cache = self.__dict__.get("_layer_views")
        if cache is None:
            cache = self._layer_views = {}
        names = self._attribute_names()
        entry = cache.get(id(layer))
        if entry is not None:
            arrays, views = entry
            if (len(arrays) == 5 + len(names[3])
                    and arrays[0] is layer and arrays[1] is layer.weights
                    and arrays[2] is layer.dweights and arrays[3] is layer.biases
                    and arrays[4] is layer.dbiases
                    and arrays[1].flags.writeable and arrays[3].flags.writeable):
                # (a plain loop, not all() over generators: this runs for every layer at
                # every step, and the generators cost ~1.5 us of its ~3.4)
                k = 5
                for name in names[3]:
                    state = arrays[k]
                    if getattr(layer, name, None) is not state or not state.flags.writeable:
                        break
                    k += 1
                else:
                    return views
            cache.pop(id(layer), None)   # (pop: another thread may have dropped it)
            return None
        be = ops.host_backend(getattr(layer, "device", None))
        if be is None:
            return None
        arrays = [layer, layer.weights, getattr(layer, "dweights", None), layer.biases,
                  getattr(layer, "dbiases", None)]
        flat = []
        for params, grads, attributes in ((arrays[1], arrays[2], names[0]),
                                          (arrays[3], arrays[4], names[1])):
            states = [getattr(layer, attribute, None) for attribute in attributes]
            checked = ops.update_views(params, grads, states)
            if checked is None:
                return None
            flat.append(checked)
            arrays += states
        if len(cache) >= self.LAYER_VIEWS:
            cache.clear()
        cache[id(layer)] = (tuple(arrays), (be, *flat))
        return None

    def __getstate__(self) -> dict:
        """Pickle and ``copy.deepcopy`` leave the kept views behind (a copy checks its own
        arrays again on its first steps)."""
        state = self.__dict__.copy()
        state.pop("_layer_views", None)
        return state

    def _kernel(self):  # pragma: no cover - overridden
        """The update as the backend runs it: the kernel's name (``loopnet.kernels.optimizers``)
        and its scalar arguments after the arrays, checked as ``ops``' update functions check
        them (the state arrays are ``state_names``, in that order)."""
        raise NotImplementedError

    def _state(self, layer, attribute: str, params):
        state = getattr(layer, attribute, None)
        if state is None or state.shape != params.shape:
            state = ops.zeros(params.shape, params.dtype, device=getattr(layer, "device", None))
            setattr(layer, attribute, state)
        return state

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

    momentum = Checked(number, minimum=0.0)

    def __init__(self, learning_rate: float = 1.0, decay: float = 0.0, momentum: float = 0.0):
        super().__init__(learning_rate, decay)
        self.momentum = momentum

    @property
    def state_names(self) -> tuple[str, ...]:
        """``("momentums",)`` with momentum, else none (follows ``momentum`` if it changes)."""
        return ("momentums",) if self.momentum else ()

    def _kernel(self):
        learning_rate = number(self.current_learning_rate, "current_learning_rate")
        if self.momentum:
            return "sgd_momentum_update", (learning_rate,
                                           number(self.momentum, "momentum", minimum=0.0))
        return "sgd_update", (learning_rate,)

    def get_config(self) -> dict:
        return {**super().get_config(), "momentum": self.momentum}


class Adagrad(Optimizer):
    """Per-parameter steps shrinking with the summed squared gradients (``Optimizer_Adagrad``)."""

    state_names = ("cache",)
    epsilon = Checked(number, minimum=0.0, strict=True)

    def __init__(self, learning_rate: float = 1.0, decay: float = 0.0, epsilon: float = 1e-7):
        super().__init__(learning_rate, decay)
        self.epsilon = epsilon

    def _kernel(self):
        return "adagrad_update", (number(self.current_learning_rate, "current_learning_rate"),
                                  number(self.epsilon, "epsilon", minimum=0.0, strict=True))

    def get_config(self) -> dict:
        return {**super().get_config(), "epsilon": self.epsilon}


class RMSprop(Optimizer):
    """Adagrad with a moving-average cache (``Optimizer_RMSprop``)."""

    state_names = ("cache",)
    epsilon = Checked(number, minimum=0.0, strict=True)
    rho = Checked(_rho)

    def __init__(self, learning_rate: float = 0.001, decay: float = 0.0, epsilon: float = 1e-7,
                 rho: float = 0.9):
        super().__init__(learning_rate, decay)
        self.epsilon = epsilon
        self.rho = rho

    def _kernel(self):
        return "rmsprop_update", (number(self.current_learning_rate, "current_learning_rate"),
                                  number(self.epsilon, "epsilon", minimum=0.0, strict=True),
                                  ops.rmsprop_rho(self.rho))

    def get_config(self) -> dict:
        return {**super().get_config(), "epsilon": self.epsilon, "rho": self.rho}


class Adam(Optimizer):
    """Momentum plus RMSprop with bias correction (``Optimizer_Adam``)."""

    state_names = ("momentums", "cache")
    epsilon = Checked(number, minimum=0.0, strict=True)
    beta_1 = Checked(number, minimum=0.0, below=1.0)
    beta_2 = Checked(number, minimum=0.0, below=1.0)

    def __init__(self, learning_rate: float = 0.001, decay: float = 0.0, epsilon: float = 1e-7,
                 beta_1: float = 0.9, beta_2: float = 0.999):
        super().__init__(learning_rate, decay)
        self.epsilon = epsilon
        self.beta_1 = beta_1
        self.beta_2 = beta_2

    def _kernel(self):
        # The scalars are the same for every layer of a step: checked and computed for the
        # first (~1.1 us), then handed out while the values they come from are the very same
        # objects (numbers do not change: the same object, the same checks passed).
        learning_rate, iterations = self.current_learning_rate, self.iterations
        epsilon, beta_1, beta_2 = self.epsilon, self.beta_1, self.beta_2
        last = self.__dict__.get("_last_scalars")
        if (last is not None and last[0] is learning_rate and last[1] is iterations
                and last[2] is epsilon and last[3] is beta_1 and last[4] is beta_2):
            return "adam_update", last[5]
        checked_1 = number(beta_1, "beta_1", minimum=0.0, below=1.0)
        checked_2 = number(beta_2, "beta_2", minimum=0.0, below=1.0)
        scalars = (number(learning_rate, "current_learning_rate"),
                   number(epsilon, "epsilon", minimum=0.0, strict=True),
                   checked_1, checked_2, *ops.adam_corrections(checked_1, checked_2, iterations))
        self._last_scalars = (learning_rate, iterations, epsilon, beta_1, beta_2, scalars)
        return "adam_update", scalars

    def get_config(self) -> dict:
        return {**super().get_config(), "epsilon": self.epsilon, "beta_1": self.beta_1,
                "beta_2": self.beta_2}


OPTIMIZERS = {cls.__name__: cls for cls in (SGD, Adagrad, RMSprop, Adam)}
