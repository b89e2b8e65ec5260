"""The notes' (and the NNFS book's) class names, so their code runs with one import::

    from loopnet.nnfs import *     # instead of the class definitions

    layer1 = Layer_Dense(2, 3)
    activation1 = Activation_ReLU()
"""

from loopnet.activations import ReLU as Activation_ReLU
from loopnet.activations import Softmax as Activation_Softmax
from loopnet.layers import Dense as Layer_Dense
from loopnet.losses import CategoricalCrossentropy as Loss_CategoricalCrossentropy
from loopnet.losses import Loss

# The notes spell it with a capital E.
Loss_CategoricalCrossEntropy = Loss_CategoricalCrossentropy

__all__ = [
    "Layer_Dense",
    "Activation_ReLU",
    "Activation_Softmax",
    "Loss",
    "Loss_CategoricalCrossentropy",
    "Loss_CategoricalCrossEntropy",
]
