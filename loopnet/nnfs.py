"""The notes' (and the NNFS book's) class names, so their code runs with one import::

    from loopnet.nnfs import *     # instead of the class definitions

    layer1 = Layer_Dense(2, 3)
    activation1 = Activation_ReLU()

Each name is loopnet's class, except ``Layer_Dropout``, a ``loopnet.Dropout`` whose ``rate``
attribute holds the fraction *kept*, as the book's does (both constructors take the fraction
dropped). The README's table "Coming from the book's code" lists what else differs.
"""

from loopnet.accuracy import Accuracy
from loopnet.accuracy import CategoricalAccuracy as Accuracy_Categorical
from loopnet.accuracy import RegressionAccuracy as Accuracy_Regression
from loopnet.activations import Linear as Activation_Linear
from loopnet.activations import ReLU as Activation_ReLU
from loopnet.activations import Sigmoid as Activation_Sigmoid
from loopnet.activations import Softmax as Activation_Softmax
from loopnet.layers import Dense as Layer_Dense
from loopnet.layers import Dropout
from loopnet.layers import Input as Layer_Input
from loopnet.losses import BinaryCrossentropy as Loss_BinaryCrossentropy
from loopnet.losses import CategoricalCrossentropy as Loss_CategoricalCrossentropy
from loopnet.losses import Loss
from loopnet.losses import MeanAbsoluteError as Loss_MeanAbsoluteError
from loopnet.losses import MeanSquaredError as Loss_MeanSquaredError
from loopnet.losses import (
    SoftmaxCategoricalCrossentropy as Activation_Softmax_Loss_CategoricalCrossentropy,
)
from loopnet.model import Model
from loopnet.optimizers import SGD as Optimizer_SGD
from loopnet.optimizers import Adagrad as Optimizer_Adagrad
from loopnet.optimizers import Adam as Optimizer_Adam
from loopnet.optimizers import RMSprop as Optimizer_RMSprop
from loopnet.validate import number



class Layer_Dropout(Dropout):
    """The book's ``Layer_Dropout``: ``Layer_Dropout(0.1)`` drops 10% of the outputs, and
    its ``rate`` attribute is the fraction kept, ``0.9``, as the book stores ``1 - rate``
    (``loopnet.Dropout.rate`` is the fraction dropped). Masks and seeds as ``Dropout``'s."""

    @property
    def rate(self) -> float:
        """The fraction of outputs kept while training (the book's ``self.rate``)."""
        return 1 - self._dropped

    @rate.setter
    def rate(self, value: float) -> None:
        kept = number(value, "rate", minimum=0.0, strict=True)
        if kept > 1:
            raise ValueError(f"Layer_Dropout's rate is the fraction kept (the book's 1 - rate): "
                             f"it must be in (0, 1], got {kept}")
        self._dropped = 1 - kept


# The notes spell it with a capital E.
Loss_CategoricalCrossEntropy = Loss_CategoricalCrossentropy

__all__ = [
    "Layer_Dense",
    "Layer_Input",
    "Activation_ReLU",
    "Activation_Softmax",
    "Loss",
    "Loss_CategoricalCrossentropy",
    "Loss_CategoricalCrossEntropy",
    "Layer_Dropout",
    "Activation_Sigmoid",
    "Activation_Linear",
    "Activation_Softmax_Loss_CategoricalCrossentropy",
    "Loss_BinaryCrossentropy",
    "Loss_MeanSquaredError",
    "Loss_MeanAbsoluteError",
    "Optimizer_SGD",
    "Optimizer_Adagrad",
    "Optimizer_RMSprop",
    "Optimizer_Adam",
    "Accuracy",
    "Accuracy_Categorical",
    "Accuracy_Regression",
    "Model",
]
