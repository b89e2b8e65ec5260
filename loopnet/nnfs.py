"""The notes' (and the NNFS book's) class names, so their code runs with one import::

    from loopnet.nnfs import *     # instead of the class definitions

    layer1 = Layer_Dense(2, 3)
    activation1 = Activation_ReLU()
"""

from loopnet.accuracy import Accuracy
from loopnet.accuracy import CategoricalAccuracy as Accuracy_Categorical
from loopnet.accuracy import RegressionAccuracy as Accuracy_Regression
from loopnet.activations import Linear as Activation_Linear
from loopnet.activations import ReLU as Activation_ReLU
from loopnet.activations import Sigmoid as Activation_Sigmoid
from loopnet.activations import Softmax as Activation_Softmax
from loopnet.layers import Dense as Layer_Dense
from loopnet.layers import Dropout as Layer_Dropout
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

# The notes spell it with a capital E.
Loss_CategoricalCrossEntropy = Loss_CategoricalCrossentropy

__all__ = [
    "Layer_Dense",
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
