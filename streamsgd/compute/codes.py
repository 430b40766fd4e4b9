"""The integers the compiled kernels branch on: one name per loss, optimizer and schedule.

The trainer turns the option names of ``config`` (``MODELS``, ``OPTIMIZERS``, ``SCHEDULES``)
into these codes once, through the ``LOSSES`` / ``OPTIMIZERS`` / ``SCHEDULES`` maps, and the
kernels compare against the names (``if loss == POISSON``). Numba reads module-level
integers as compile-time constants, so a named code costs nothing over a literal.

The values are part of the checkpoint format (a checkpoint stores the run's ``spec``
array, which holds them) and must never be renumbered. Numba's on-disk cache of a kernel is
keyed on its own file, not on this one: were a value ever changed here, the kernels' files
(or their ``__pycache__``) would have to change with it.
"""

from __future__ import annotations

# losses (``losses.loss_slope``; SOFTMAX has its own kernel, ``losses.accumulate_softmax_rows``)
LINEAR = 0
LOGISTIC = 1
HUBER = 2
HINGE = 3
MODIFIED_HUBER = 4
POISSON = 5
QUANTILE = 6
SOFTMAX = 7

# optimizers (``optim.optimizer_step``)
SGD = 0
MOMENTUM = 1
NESTEROV = 2
ADAGRAD = 3
ADAM = 4
ADAMW = 5

# learning-rate schedules (``optim.schedule_lr``)
CONSTANT = 0
INVSCALING = 1
STEP = 2
COSINE = 3

#: Model name (``config.MODELS``) -> its loss code.
LOSSES = {
    "linear": LINEAR, "logistic": LOGISTIC, "huber": HUBER, "hinge": HINGE, "modified_huber": MODIFIED_HUBER,
    "poisson": POISSON, "quantile": QUANTILE, "softmax": SOFTMAX,
}

#: Optimizer name (``config.OPTIMIZERS``) -> its code.
OPTIMIZERS = {"sgd": SGD, "momentum": MOMENTUM, "nesterov": NESTEROV, "adagrad": ADAGRAD, "adam": ADAM, "adamw": ADAMW}

#: Schedule name (``config.SCHEDULES``) -> its code.
SCHEDULES = {"constant": CONSTANT, "invscaling": INVSCALING, "step": STEP, "cosine": COSINE}
